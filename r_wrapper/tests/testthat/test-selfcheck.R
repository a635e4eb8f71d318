# The self-check from R: options passed to Python, summary stored on the object, the learnt
# stack's interval kept beside the values.

check_summary <- function(check, n_known) {
  expect_type(check, "list")
  expect_true(is.numeric(check$median_pcc) && length(check$median_pcc) == 1L)
  expect_true(is.numeric(check$median_spcc) && length(check$median_spcc) == 1L)
  expect_identical(check$n_genes, as.integer(n_known))
  expect_s3_class(check$per_gene, "data.frame")
  expect_identical(names(check$per_gene), c("gene", "fold", "pcc", "spcc"))
  expect_identical(nrow(check$per_gene), as.integer(n_known))
  expect_type(check$per_gene$gene, "character")
  expect_equal(check$median_pcc, stats::median(check$per_gene$pcc, na.rm = TRUE))
  # no grid any more: the weights of the stack's columns, largest first
  expect_null(check$selected)
  w <- check$weights
  expect_type(w, "double")
  expect_true(length(w) >= 1L && all(w > 0) && !is.unsorted(rev(w)))
  cand <- check$candidates
  expect_s3_class(cand, "data.frame")
  expect_identical(names(cand), c("column", "predictor", "view", "readout", "median_pcc",
                                  "median_spcc", "weight"))
  expect_identical(cand$column, paste(cand$predictor, cand$view, cand$readout, sep = "|"))
  expect_true(all(names(w) %in% cand$column))
  expect_equal(cand$weight[match(names(w), cand$column)], unname(w))
  expect_true(all(cand$weight[!cand$column %in% names(w)] == 0))
  expect_type(check$interval, "list")
  expect_true(check$interval$level > 0 && check$interval$level < 1)
  expect_true(is.finite(check$interval$quantile) && check$interval$n_calibration > 0)
}

# The run's expected accuracy in the summary (expected_median_pcc, its se and interval) and
# each imputed gene's expected PCC: the calibration line at its reference predictability.
check_expected <- function(check, expected, reference, genes) {
  expect_true(is.numeric(check$expected_median_pcc) && length(check$expected_median_pcc) == 1L)
  expect_true(check$expected_median_pcc_se >= 0)
  interval <- check$expected_median_pcc_interval
  expect_identical(names(interval), c("lower", "upper"))
  expect_true(interval[["lower"]] <= check$expected_median_pcc &&
                check$expected_median_pcc <= interval[["upper"]])
  expect_true(check$expected_level > 0 && check$expected_level < 1)
  expect_identical(names(expected), genes)
  expect_identical(names(reference), genes)
  expect_true(all(is.finite(expected)) && all(is.finite(reference)))
  # the per-gene model's values, their median set to the run's estimate
  expect_true(all(abs(expected) <= 1))
  expect_equal(stats::median(expected), check$expected_median_pcc, tolerance = 1e-5)
}

# 0 <= lower <= upper, aligned with the values, and std is the interval's half-width over the
# normal quantile of the level. The interval bounds what the ST would measure (a count's
# log-normalised value), not the imputed value: where a count is almost surely 0 it is [0, 0]
# whatever the imputation (see Impute's help), so it need not contain the value.
check_interval <- function(vals, std, lower, upper, level) {
  vals <- as.matrix(vals)
  std <- as.matrix(std)
  lower <- as.matrix(lower)
  upper <- as.matrix(upper)
  expect_identical(dimnames(lower), dimnames(vals))
  expect_identical(dimnames(upper), dimnames(vals))
  expect_true(all(lower >= 0) && all(lower <= upper) && any(upper > lower))
  z <- stats::qnorm((1 + level) / 2)
  expect_equal(std, (upper - lower) / (2 * z), tolerance = 1e-5)
}

test_that("Impute on Seurat stores the stack's weights and interval, and messages them", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  d <- tiny_counts()
  objs <- tiny_seurat(d)
  args <- c(list(objs$st, objs$ref, genes = c("G17", "GENE_U1"), self.check = TRUE,
                 self.check.folds = 2L), FAST)
  args$verbose <- TRUE
  msgs <- character()
  out <- withCallingHandlers(do.call(Impute, args), message = function(m) {
    msgs <<- c(msgs, conditionMessage(m))
    invokeRestart("muffleMessage")
  })
  tool <- SeuratObject::Tool(out, "Impute")
  check <- tool$self_check
  check_summary(check, length(d$known))
  expect_setequal(check$per_gene$gene, d$known)
  expect_setequal(unique(check$per_gene$fold), c(0L, 1L))
  expect_identical(check$interval$level, 0.9)
  line <- grep("SpaLSTF self-check: median PCC", msgs, value = TRUE)
  expect_length(line, 1L)
  w <- check$weights
  expect_true(startsWith(line, sprintf(
    "SpaLSTF self-check: median PCC %.3f, SPCC %.3f over %d hidden known genes (weights: %s %.2f",
    check$median_pcc, check$median_spcc, length(d$known), names(w)[1], w[[1]])))
  # the interval: two assays beside the values and their uncertainty
  expect_identical(tool$interval.assay.names, c("SpaLSTF.lower", "SpaLSTF.upper"))
  get <- function(obj, a) SeuratObject::GetAssayData(obj, assay = a, slot = "data")
  check_interval(get(out, "SpaLSTF"), get(out, "SpaLSTF.std"), get(out, "SpaLSTF.lower"),
                 get(out, "SpaLSTF.upper"), check$interval$level)
  expect_identical(out[["SpaLSTF.upper"]]@meta.features$feature_name, c("G17", "GENE_U1"))
  # each gene's expected accuracy in the feature meta data, the run's in the summary
  features <- out[["SpaLSTF"]][[]]
  expect_true(all(c("feature_name", "expected_pcc", "reference_pcc", "expected_pcc_sd") %in%
                    names(features)))
  expect_true(all(features$expected_pcc_sd >= 0))  # how sure each expected_pcc is
  per_gene <- function(column) stats::setNames(features[[column]], features$feature_name)
  check_expected(check, per_gene("expected_pcc"), per_gene("reference_pcc"),
                 c("G17", "GENE_U1"))
  expect_identical(check$expected_level, 0.9)
  expect_identical(SeuratObject::Key(out[["SpaLSTF.lower"]]), "spalstflower_")
  keep <- colnames(out)[c(4, 1, 22)]
  sub <- subset(out, cells = keep)
  expect_identical(as.matrix(get(sub, "SpaLSTF.lower")),
                   as.matrix(get(out, "SpaLSTF.lower"))[, colnames(sub), drop = FALSE])
  # Off: no summary, the fixed blend, no interval; the earlier run's interval would not
  # match the new values, so its assays go (with the warning naming them)
  expect_warning(
    off <- do.call(Impute, c(list(out, objs$ref, genes = "G17", self.check = FALSE), FAST)),
    paste0("Assays \"SpaLSTF\", \"SpaLSTF.std\", \"SpaLSTF.lower\", \"SpaLSTF.upper\" and ",
           "\"SpaLSTF.proportions\" replaced"))
  expect_null(SeuratObject::Tool(off, "Impute")$self_check)
  expect_null(SeuratObject::Tool(off, "Impute")$interval.assay.names)
  expect_false("expected_pcc" %in% names(off[["SpaLSTF"]][[]]))  # no self-check, no estimate
  expect_identical(SeuratObject::Misc(off[["SpaLSTF"]], "spalstf")$combination$kind, "blend")
  expect_setequal(SeuratObject::Assays(off),
                  c("Spatial", "SpaLSTF", "SpaLSTF.std", "SpaLSTF.proportions"))
  expect_silent(do.call(Impute, c(list(objs$st, objs$ref, genes = "G17",
                                       self.check.folds = 2L, select = NULL), FAST)))
})

test_that("Impute on SingleCellExperiment and matrices stores the self-check; spatial is used", {
  skip_if_no_spalstf()
  skip_if_no_sce()
  d <- tiny_counts()
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = d$st))
  SingleCellExperiment::reducedDim(sce, "spatial") <- d$coords
  ref_sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = d$ref))
  out <- do.call(Impute, c(list(sce, ref_sce, genes = "G17", self.check.folds = 2L,
                                interval_level = 0.8), FAST))
  check <- S4Vectors::metadata(out)$SpaLSTF$self_check
  check_summary(check, length(d$known))
  expect_identical(check$interval$level, 0.8)
  alt <- SingleCellExperiment::altExp(out, "SpaLSTF")
  expect_identical(SummarizedExperiment::assayNames(alt),
                   c("logcounts", "counts", "std", "lower", "upper"))
  a <- function(n) SummarizedExperiment::assay(alt, n)
  # counts: the values at each cell's depth, its total over the known genes
  expect_equal(unname(a("counts")), unname(expected_counts(a("logcounts"), colSums(d$st))),
               tolerance = 1e-5)
  check_interval(a("logcounts"), a("std"), a("lower"), a("upper"), 0.8)
  rows <- SummarizedExperiment::rowData(alt)
  check_expected(check, stats::setNames(rows$expected_pcc, rownames(alt)),
                 stats::setNames(rows$reference_pcc, rownames(alt)), "G17")
  # The spatial context: given as a matrix (rows in another order, matched by name) it
  # gives the values of the object's own coordinates; FALSE turns it off.
  xy <- d$coords
  rownames(xy) <- colnames(d$st)
  opts <- c(list(genes = "G17", self.check = FALSE, spatial_weight = 0.5), FAST)
  from_obj <- do.call(Impute, c(list(sce, ref_sce), opts))
  m <- do.call(Impute, c(list(d$st, d$ref, spatial = xy[rev(seq_len(nrow(xy))), ]), opts))
  expect_equal(unname(m[, ]), unname(SummarizedExperiment::assay(
    SingleCellExperiment::altExp(from_obj, "SpaLSTF"), "logcounts")[, ]), tolerance = 1e-6)
  flat <- do.call(Impute, c(list(d$st, d$ref, spatial = FALSE), opts))
  expect_false(isTRUE(all.equal(unname(m[, ]), unname(flat[, ]))))
  expect_null(attr(flat, "self_check"))
  expect_null(attr(flat, "lower"))
  expect_null(attr(flat, "expected_pcc"))
  # without a self-check, the SCE has no interval assays either
  expect_identical(SummarizedExperiment::assayNames(
    SingleCellExperiment::altExp(from_obj, "SpaLSTF")), c("logcounts", "counts", "std"))
  mc <- do.call(Impute, c(list(d$st, d$ref, genes = "G17", self.check.folds = 2L), FAST))
  check <- attr(mc, "self_check")
  check_summary(check, length(d$known))
  check_interval(mc[, , drop = FALSE], attr(mc, "std"), attr(mc, "lower"), attr(mc, "upper"),
                 check$interval$level)
  check_expected(check, attr(mc, "expected_pcc"), attr(mc, "reference_pcc"), "G17")
})

test_that("the self-check and spatial options are checked in R", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  d <- tiny_counts()
  objs <- tiny_seurat(d)
  expect_error(Impute(d$st, d$ref, genes = "G17", self.check = "yes"), "`self.check` must be")
  expect_error(Impute(d$st, d$ref, genes = "G17", self.check.folds = 1), "`self.check.folds`")
  # the grid of earlier versions is refused, saying what replaced it
  expect_error(Impute(d$st, d$ref, genes = "G17", select = list(residual_weight = c(0.5, 1))),
               "`select` must be \"auto\" or NULL: .*stack.*combine = \"blend\".*received: list")
  expect_error(Impute(objs$st, objs$ref, genes = "G17", select = "grid"),
               "`select` must be \"auto\" or NULL")
  expect_error(Impute(d$st, d$ref, genes = "G17", select = c("auto", "auto")),
               "`select` must be \"auto\" or NULL")
  expect_error(Impute(d$st, d$ref, genes = "G17", spatial = d$coords[-1, ]),
               "`spatial` must be a cells x dimensions matrix with 30 rows")
  expect_error(Impute(d$st, d$ref, genes = "G17", spatial = c("x", "y")), "`spatial` must be")
  expect_error(Impute(objs$st, objs$ref, genes = "G17", spatial = c("x", "nope")),
               "`coords` must name two numeric meta data columns")
  # Python's own checks reach R as R errors.
  err <- tryCatch(do.call(Impute, c(list(d$st, d$ref, genes = "G17", interval_level = 2),
                                    FAST)),
                  error = identity)
  expect_s3_class(err, "spalstf_python_error")
  expect_match(conditionMessage(err), "`interval_level` must be in \\(0, 1\\)")
  model <- FitSpaLSTF(objs$ref, known.genes = d$known, target.genes = "G17", epochs = 1L,
                      verbose = FALSE)
  expect_error(Impute(objs$st, model, self.check = TRUE, verbose = FALSE),
               "a SpaLSTFModel is not refitted")
})
