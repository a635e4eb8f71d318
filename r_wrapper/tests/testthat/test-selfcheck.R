# The self-check from R: options passed to Python, summary stored on the object.

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
  expect_type(check$selected, "list")
  expect_s3_class(check$candidates, "data.frame")
  expect_identical(sum(check$candidates$selected), 1L)
}

test_that("Impute on Seurat stores the self-check in Tool() and messages the median PCC", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  d <- tiny_counts()
  objs <- tiny_seurat(d)
  args <- c(list(objs$st, objs$ref, genes = c("G17", "GENE_U1"), self.check = TRUE,
                 self.check.folds = 2L, select = list(residual_weight = c(0.5, 1))), FAST)
  args$verbose <- TRUE
  msgs <- character()
  out <- withCallingHandlers(do.call(Impute, args), message = function(m) {
    msgs <<- c(msgs, conditionMessage(m))
    invokeRestart("muffleMessage")
  })
  check <- SeuratObject::Tool(out, "Impute")$self_check
  check_summary(check, length(d$known))
  expect_setequal(check$per_gene$gene, d$known)
  expect_setequal(unique(check$per_gene$fold), c(0L, 1L))
  expect_identical(names(check$selected), "residual_weight")
  expect_true(check$selected$residual_weight %in% c(0.5, 1))
  expect_identical(nrow(check$candidates), 2L)
  line <- grep("SpaLSTF self-check: median PCC", msgs, value = TRUE)
  expect_length(line, 1L)
  expect_match(line, sprintf("median PCC %.3f, SPCC %.3f over %d hidden known genes \\(selected residual_weight=",
                             check$median_pcc, check$median_spcc, length(d$known)))
  # Off: no summary; quiet: no message.
  off <- do.call(Impute, c(list(objs$st, objs$ref, genes = "G17", self.check = FALSE), FAST))
  expect_null(SeuratObject::Tool(off, "Impute")$self_check)
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
                                select = list(spatial_weight = c(0, 0.5),
                                              output = c("expression", "at_depth"))), FAST))
  check <- S4Vectors::metadata(out)$SpaLSTF$self_check
  check_summary(check, length(d$known))
  expect_identical(names(check$selected), c("spatial_weight", "output"))
  expect_true(check$selected$output %in% c("expression", "at_depth"))
  # stage 1 scores each spatial weight on the prior alone, then the other output at the
  # chosen weight; stage 2 samples the chosen setting
  cand <- check$candidates
  prior <- cand[cand$stage == "prior", ]
  expect_identical(prior$output, c("expression", "expression", "at_depth"))
  expect_identical(prior$spatial_weight[1:2], c(0, 0.5))
  expect_identical(prior$spatial_weight[3], check$selected$spatial_weight)
  expect_true(all(cand$spatial_weight[cand$stage == "model"] == check$selected$spatial_weight))
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
  mc <- do.call(Impute, c(list(d$st, d$ref, genes = "G17", self.check.folds = 2L,
                               select = NULL), FAST))
  check_summary(attr(mc, "self_check"), length(d$known))
  expect_length(attr(mc, "self_check")$selected, 0L)
})

test_that("the self-check and spatial options are checked in R", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  d <- tiny_counts()
  objs <- tiny_seurat(d)
  expect_error(Impute(d$st, d$ref, genes = "G17", self.check = "yes"), "`self.check` must be")
  expect_error(Impute(d$st, d$ref, genes = "G17", self.check.folds = 1), "`self.check.folds`")
  expect_error(Impute(d$st, d$ref, genes = "G17", select = list(0.5)), "`select` must be")
  expect_error(Impute(d$st, d$ref, genes = "G17", select = list(spatial_weight = "a")),
               "`select` must be")
  expect_error(Impute(d$st, d$ref, genes = "G17", select = list(output = c(0, 1))),
               "`select` must be")
  expect_error(Impute(d$st, d$ref, genes = "G17", spatial = d$coords[-1, ]),
               "`spatial` must be a cells x dimensions matrix with 30 rows")
  expect_error(Impute(d$st, d$ref, genes = "G17", spatial = c("x", "y")), "`spatial` must be")
  expect_error(Impute(objs$st, objs$ref, genes = "G17", spatial = c("x", "nope")),
               "`coords` must name two numeric meta data columns")
  # Python's own checks reach R as R errors.
  err <- tryCatch(do.call(Impute, c(list(d$st, d$ref, genes = "G17",
                                         select = list(nope = c(1, 2))), FAST)),
                  error = identity)
  expect_s3_class(err, "spalstf_python_error")
  expect_match(conditionMessage(err), "`select` can choose among")
  model <- FitSpaLSTF(objs$ref, known.genes = d$known, target.genes = "G17", epochs = 1L,
                      verbose = FALSE)
  expect_error(Impute(objs$st, model, self.check = TRUE, verbose = FALSE),
               "a SpaLSTFModel is not refitted")
})
