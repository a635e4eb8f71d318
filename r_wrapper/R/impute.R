# Impute(): the Seurat / SingleCellExperiment / matrix front door.

#' Impute unmeasured genes with SpaLSTF
#'
#' Fits spalstf's base predictors on the reference and learns their combination on the
#' object's own known genes (or uses a model from \code{\link{FitSpaLSTF}}), then predicts the
#' expression of \code{genes} in every cell (spot) of \code{object}, by calling
#' \code{spalstf.impute()} (or \code{Model.impute()}) of the Python package. The SpaLSTF
#' diffusion network is trained only when \code{predictors} (in \code{...}) lists
#' \code{"network"}; \code{n.samples}, \code{n.steps} and \code{epochs} act only then.
#'
#' Results are on the log-normalised scale \code{log1p(count / total of the known genes * 1e4)}.
#' When it fits on a reference, \code{Impute()} fits several base predictors (\code{predictors}
#' in \code{...}: the ridge prior, the aligned-neighbour estimate, plain kNN, a SpaGE-style
#' projection, a Tangram-style optimal-transport mapping, a mixture of reference clusters
#' weighed by the likelihood of each spot's counts; the SpaLSTF diffusion only when
#' \code{predictors} lists \code{"network"}: it costs minutes per fit on a CPU), each read
#' with and without the spatial or expression context and, with counts, as the expression or
#' as the value each spot would measure at its own depth (zeros included; \code{output}).
#' The self-check (below) learns non-negative weights of these columns on the object's own
#' hidden known genes: the imputation is their weighted combination (a \emph{stack};
#' \code{combine = "stack"}, the default). Without a self-check, with a
#' \code{\link{FitSpaLSTF}} model that holds no learnt weights, or with
#' \code{combine = "blend"}, it is the fixed blend of the ridge prior and the aligned
#' neighbours, refined by the diffusion where the network is fitted (settings
#' \code{knn_weight}, \code{residual_weight},
#' \code{depth_weight}, ... in \code{...}).
#'
#' Each value comes with an uncertainty. With the stack: an interval calibrated on the hidden
#' known genes (nominal coverage \code{interval_level} in \code{...}, 0.9 by default) of what
#' the object would measure: with counts, quantiles of a negative binomial count model at
#' each cell's depth, so [0, 0] where a count is almost surely 0 and wider where counts are
#' large (it bounds the measurement, so it need not contain the imputed value, an
#' expectation); with log-normalised input, a conformal band around the value. \code{std} is
#' the interval's half-width divided by the normal quantile of that level, (upper - lower) /
#' (2 z). With the fixed blend: no interval, and, where the network is
#' fitted, the standard deviation over its \code{n.samples} reverse-diffusion samples. For Seurat the uncertainty is
#' the assay \code{paste0(new.assay.name, ".std")} (\code{"SpaLSTF.std"} by default; the same
#' genes and cells, \code{data} slot) and the interval the assays \code{"SpaLSTF.lower"} and
#' \code{"SpaLSTF.upper"}; for SingleCellExperiment the assays \code{"std"}, \code{"lower"}
#' and \code{"upper"} of the alternative experiment; for matrices \code{attr(x, "std")},
#' \code{attr(x, "lower")} and \code{attr(x, "upper")}. Being assays of the object, values,
#' uncertainty and interval stay aligned through \code{subset()}, \code{merge()} and
#' \code{[}, and Seurat's plots read them by the assays' keys: \code{"spalstf_CD3E"},
#' \code{"spalstfstd_CD3E"}, \code{"spalstflower_CD3E"} and \code{"spalstfupper_CD3E"}
#' (e.g. \code{Seurat::ImageFeaturePlot()} on an object with an image or field of view,
#' \code{Seurat::FeaturePlot()} with a reduction).
#'
#' Gene and cell names come back exactly as given. Seurat does not allow \code{_} in feature
#' names (it writes \code{-}): requested genes are matched against the reference's original
#' names (kept by \code{\link{AnnDataToSeurat}} in the feature meta data column
#' \code{feature_name}) or their Seurat spelling, and the new assay keeps the requested names
#' in its feature meta data column \code{feature_name}.
#'
#' When it fits on a reference, \code{Impute()} also estimates how accurate the imputation is
#' on this data (the self-check of \code{spalstf.impute}): it hides groups of the known genes
#' of \code{object} in turn (\code{self.check.folds} groups), predicts them from the others
#' with every base predictor and scores them against their measured values (Pearson and
#' Spearman correlation per gene, log-normalised scale). The same hidden genes learn the
#' stack's weights and calibrate its interval; the scores are those of the stack, cross-fitted
#' (each fold's genes combined by weights learnt on the other folds). The summary is a list
#' with \code{median_pcc}, \code{median_spcc}, \code{n_genes}, \code{weights} (a named
#' numeric vector, largest first: the weight of each column of the stack, named
#' \code{"predictor|view|readout"}, e.g. \code{"knn|spatial|expression"}; columns with no
#' weight are left out), \code{interval} (a list: its nominal \code{level}, the conformal
#' \code{quantile} and \code{offset} of the scale, and \code{n_calibration}, the values it
#' was calibrated on), \code{per_gene} (a data.frame with columns \code{gene}, \code{fold},
#' \code{pcc}, \code{spcc}), \code{candidates} (a data.frame, one row per column of the
#' stack: \code{column}, \code{predictor}, \code{view}, \code{readout}, its own
#' \code{median_pcc} and \code{median_spcc}, and its \code{weight}), \code{calibration}
#' (the line from each gene's predictability in the reference to its expected PCC here) and
#' \code{seconds}, and, where the self-check carried its estimate to all the known genes,
#' \code{expected_median_pcc} (the run's expected median PCC with all its known genes: higher
#' than \code{median_pcc}, measured with a share of them hidden), its standard error
#' \code{expected_median_pcc_se}, its interval \code{expected_median_pcc_interval}
#' (\code{c(lower = , upper = )}) and that interval's level \code{expected_level};
#' it goes to \code{Tool(object, "Impute")$self_check} (Seurat),
#' \code{metadata(object)$SpaLSTF$self_check} (SingleCellExperiment) or
#' \code{attr(x, "self_check")} (matrices), and the median PCC and the largest weights are
#' printed when \code{verbose}. Hidden known genes were chosen for the panel, so genes it
#' never measured may be harder than the estimate says.
#'
#' Each imputed gene's expected accuracy comes with a self-check too (Python's
#' \code{var["expected_pcc"]} and \code{var["reference_pcc"]}): \code{expected_pcc}, its
#' expected PCC on this data, learnt on the self-check's hidden genes from
#' \code{reference_pcc} (how well the known genes predict it in the reference), the
#' agreement of the base predictions and the spread of the prediction, its median set to
#' \code{expected_median_pcc}; \code{expected_pcc_sd}, how far a gene's PCC strays from it.
#' They are the columns \code{expected_pcc}, \code{expected_pcc_sd} and
#' \code{reference_pcc} of the feature meta data of the assay
#' \code{new.assay.name} (Seurat: \code{object[["SpaLSTF"]][[]]}), of the \code{rowData} of
#' the alternative experiment (SingleCellExperiment), or \code{attr(x, "expected_pcc")} and
#' \code{attr(x, "reference_pcc")}, named by gene (matrices); absent without a self-check.
#' A gene with a low expected PCC, or a run whose \code{expected_median_pcc_interval} is
#' low, is one to confirm by other means before acting on it.
#'
#' @param object Spatial data: a Seurat object, a SingleCellExperiment, a genes x cells matrix
#'   (dense or a \code{dgCMatrix}; raw counts unless \code{log.normalized = TRUE}), or a Python
#'   AnnData (cells x genes; then the Python result is returned as is).
#' @param reference The scRNA-seq reference: a Seurat object, a SingleCellExperiment, a genes x
#'   cells matrix with gene names, a Python AnnData, or a model from \code{\link{FitSpaLSTF}}.
#' @param genes Genes to impute (character). \code{NULL}: the reference genes that
#'   \code{object} lacks (the most variable ones when there are many; see the Python
#'   documentation of \code{spalstf.impute}). Genes absent from the reference are dropped with
#'   a warning. A requested gene that \code{object} measures is predicted as if hidden.
#' @param ... Further options of \code{spalstf.impute} under their Python names, e.g.
#'   \code{spatial_weight = 0.25}, \code{batch_size = 128L}, \code{predictors}.
#' @return The object with the imputations added (see the methods), or for matrices a genes x
#'   cells matrix.
#' @seealso \code{\link{FitSpaLSTF}}, \code{\link{CrossValidate}}
#' @examples
#' \dontrun{
#' st <- readRDS("st_seurat.rds")
#' sc <- readRDS("sc_seurat.rds")
#' st <- Impute(st, sc, genes = c("CD3E", "MS4A1"))
#' Seurat::GetAssayData(st, assay = "SpaLSTF", slot = "data")      # imputed values
#' Seurat::GetAssayData(st, assay = "SpaLSTF.std", slot = "data")  # their uncertainty
#' Seurat::GetAssayData(st, assay = "SpaLSTF.upper", slot = "data")  # upper bound (90%)
#' Seurat::Tool(st, "Impute")$self_check$weights  # what the stack learnt
#' Seurat::Tool(st, "Impute")$self_check$expected_median_pcc_interval  # the run's accuracy
#' st[["SpaLSTF"]][[]]$expected_pcc  # each gene's expected accuracy
#' Seurat::ImageFeaturePlot(st, features = c("spalstf_CD3E", "spalstfstd_CD3E"))
#' }
#' @export
Impute <- function(object, reference, genes = NULL, ...) {
  UseMethod("Impute")
}

#' @describeIn Impute Fails with a message naming the classes accepted.
#' @export
Impute.default <- function(object, reference, genes = NULL, ...) {
  stop("`object` must be a Seurat object, a SingleCellExperiment, a genes x cells matrix ",
       "(matrix or dgCMatrix) or a Python AnnData; received: ",
       paste(class(object), collapse = "/"), call. = FALSE)
}

# ----------------------------------------------------------------------------- shared core
.check_flag <- function(x, arg) {
  if (!is.logical(x) || length(x) != 1L || is.na(x)) {
    stop(sprintf("`%s` must be TRUE or FALSE, received: %s", arg,
                 paste(deparse(x), collapse = " ")), call. = FALSE)
  }
  x
}

.check_count <- function(x, arg, null.ok = TRUE, min = 1L) {
  if (null.ok && is.null(x)) return(NULL)
  if (!is.numeric(x) || length(x) != 1L || is.na(x) || x != round(x) || x < min) {
    stop(sprintf("`%s` must be one whole number >= %d%s, received: %s", arg, min,
                 if (null.ok) " (or NULL)" else "", paste(deparse(x), collapse = " ")),
         call. = FALSE)
  }
  as.integer(x)
}

.check_genes <- function(genes, arg = "genes") {
  if (is.null(genes)) return(NULL)
  if (is.factor(genes)) genes <- as.character(genes)
  if (!is.character(genes) || !length(genes) || anyNA(genes) || any(!nzchar(genes))) {
    stop(sprintf("`%s` must be a non-empty character vector of gene names, received: %s", arg,
                 paste(utils::capture.output(utils::str(genes)), collapse = " ")), call. = FALSE)
  }
  if (anyDuplicated(genes)) {
    stop(sprintf("`%s` has duplicated genes: %s", arg,
                 paste(unique(genes[duplicated(genes)]), collapse = ", ")), call. = FALSE)
  }
  genes
}

# Options shared by every method, as keyword arguments for Python (integers as integers).
.py_options <- function(seed, device, n.samples, n.steps, epochs, verbose, dots) {
  seed <- .check_count(seed, "seed", null.ok = FALSE, min = 0L)
  .check_string(device, "device")
  verbose <- .check_flag(verbose, "verbose")
  opts <- list(seed = seed, device = device, progress = verbose,
               n_samples = .check_count(n.samples, "n.samples"),
               n_steps = .check_count(n.steps, "n.steps"),
               epochs = .check_count(epochs, "epochs"))
  if (length(dots)) {
    if (is.null(names(dots)) || any(!nzchar(names(dots)))) {
      stop("Options in `...` must be named (Python names of spalstf.impute, e.g. max_time = 60).",
           call. = FALSE)
    }
    # Whole numbers go to Python as integers (Python accepts an int wherever a float goes).
    dots <- lapply(dots, function(v) {
      if (is.double(v) && length(v) == 1L && !is.na(v) && v == round(v) && abs(v) < 2^31) {
        as.integer(v)
      } else {
        v
      }
    })
    opts <- c(opts, dots)
  }
  opts[!vapply(opts, is.null, TRUE)]
}

# The self-check options (spalstf.impute's self_check, self_check_folds, select) for Python.
# `select` mirrors Python: "auto" or NULL. It no longer takes candidate settings (a named
# list): the self-check learns the weights of a stack of base predictions instead.
.self_check_options <- function(self.check, self.check.folds, select) {
  if (!(identical(self.check, "auto") || (is.logical(self.check) && length(self.check) == 1L &&
                                           !is.na(self.check)))) {
    stop("`self.check` must be TRUE, FALSE or \"auto\", received: ",
         paste(deparse(self.check), collapse = " "), call. = FALSE)
  }
  folds <- .check_count(self.check.folds, "self.check.folds", null.ok = FALSE, min = 2L)
  if (!is.null(select) && !identical(select, "auto")) {
    stop("`select` must be \"auto\" or NULL: the self-check no longer chooses among ",
         "candidate settings, it learns the weights of a stack of base predictions on the ",
         "object's own known genes (for the fixed blend pass combine = \"blend\" and its ",
         "settings in `...`); received: ",
         paste(deparse(select), collapse = " "), call. = FALSE)
  }
  list(self_check = self.check, self_check_folds = folds, select = select)
}

# `spatial` of Impute(): list(coords = for the converters, py = for Python (NULL: leave out)).
.spatial_option <- function(spatial, cells, converters = TRUE) {
  if (is.null(spatial)) return(list(coords = NULL, py = NULL))
  if (isFALSE(spatial)) return(list(coords = FALSE, py = FALSE))
  if (converters && is.character(spatial) && length(spatial) == 2L && !anyNA(spatial)) {
    return(list(coords = spatial, py = NULL))
  }
  if (is.data.frame(spatial)) spatial <- as.matrix(spatial)
  if (is.matrix(spatial) && is.numeric(spatial)) {
    if (nrow(spatial) != length(cells) || ncol(spatial) < 1L) {
      stop(sprintf("`spatial` must be a cells x dimensions matrix with %d rows (one per cell); ",
                   length(cells)), "received ", nrow(spatial), " x ", ncol(spatial),
           call. = FALSE)
    }
    if (!is.null(rownames(spatial))) {
      idx <- match(cells, rownames(spatial))
      if (anyNA(idx)) {
        stop("The row names of `spatial` must be the cell names of `object`; missing: ",
             paste(utils::head(cells[is.na(idx)], 5L), collapse = ", "), call. = FALSE)
      }
      spatial <- spatial[idx, , drop = FALSE]
    }
    storage.mode(spatial) <- "double"
    return(list(coords = FALSE, py = unname(spatial)))
  }
  stop("`spatial` must be NULL (the object's coordinates, when it has any), FALSE (none), ",
       if (converters) "two meta data column names (x, y), " else "",
       "or a numeric cells x dimensions matrix; received: ",
       paste(utils::capture.output(utils::str(spatial)), collapse = " "), call. = FALSE)
}

# The Python self-check record (uns["spalstf"]["self_check"]) as an R list: the per-gene
# scores as a data.frame, the stack's weights as a named numeric vector (largest first), its
# candidate columns as a data.frame and its interval as a list; NULL when no self-check ran.
.self_check_summary <- function(check) {
  if (is.null(check) || !length(check)) return(NULL)
  num <- function(v) as.numeric(unlist(v))
  # a list from Python, NULL (None) entries as NA, so that columns keep their length
  column <- function(v) {
    v <- lapply(v, function(x) if (is.null(x)) NA else x)
    if (length(v)) unlist(v) else logical()
  }
  per_gene <- data.frame(gene = as.character(unlist(check$genes)),
                         fold = as.integer(unlist(check$fold)),
                         pcc = num(check$pcc), spcc = num(check$spcc),
                         stringsAsFactors = FALSE)
  w <- check$weights
  weights <- stats::setNames(num(w), names(w) %||% character())
  weights <- weights[order(-weights, names(weights))]
  cand <- check$candidates
  candidates <- if (length(cand)) {
    as.data.frame(lapply(cand, column), stringsAsFactors = FALSE, optional = TRUE)
  } else {
    NULL
  }
  scalars <- function(x) lapply(x, function(v) if (is.null(v)) NA else unlist(v))
  out <- list(median_pcc = num(check$median_pcc), median_spcc = num(check$median_spcc),
              n_genes = as.integer(unlist(check$n_genes)),
              weights = weights, interval = scalars(check$interval %||% list()),
              per_gene = per_gene, candidates = candidates,
              calibration = scalars(check$calibration %||% list()),
              seconds = num(check$seconds))
  # the run's expected median PCC with all its known genes, its standard error and interval
  if (!is.null(check$expected_median_pcc)) {
    out$expected_median_pcc <- num(check$expected_median_pcc)
    out$expected_median_pcc_se <- num(check$expected_median_pcc_se)
    out$expected_median_pcc_interval <- stats::setNames(
      num(check$expected_median_pcc_interval), c("lower", "upper"))
    out$expected_level <- num(check$expected$level %||% NA)
  }
  out
}

# Per imputed gene: its expected PCC on this data and its predictability in the reference
# (uns["spalstf"]["gene_confidence"], Python's var["expected_pcc"] and var["reference_pcc"]),
# as a data.frame in the order of `genes` (the result's gene names, as Python wrote them), or
# NULL where the run has none (no self-check, or a model without them).
.gene_confidence <- function(confidence, genes) {
  if (is.null(confidence) || is.null(confidence$genes)) return(NULL)
  idx <- match(genes, as.character(unlist(confidence$genes)))
  if (anyNA(idx)) return(NULL)
  out <- data.frame(expected_pcc = as.numeric(unlist(confidence$expected_pcc))[idx],
                    reference_pcc = as.numeric(unlist(confidence$reference_pcc))[idx])
  # how sure each expected_pcc is (Python's var["expected_pcc_sd"]; absent in older runs)
  if (!is.null(confidence$expected_pcc_sd)) {
    out$expected_pcc_sd <- as.numeric(unlist(confidence$expected_pcc_sd))[idx]
  }
  out
}

# "SpaLSTF self-check: median PCC ..., SPCC ... over n hidden known genes (weights: the three
# largest)".
.self_check_message <- function(check, n = 3L) {
  w <- check$weights[check$weights > 0]
  top <- if (length(w)) {
    shown <- utils::head(w, n)
    sprintf(" (weights: %s%s)", paste(sprintf("%s %.2f", names(shown), shown), collapse = ", "),
            if (length(w) > n) sprintf(", %d more", length(w) - n) else "")
  } else {
    ""
  }
  message(sprintf("SpaLSTF self-check: median PCC %.3f, SPCC %.3f over %d hidden known genes%s",
                  check$median_pcc, check$median_spcc, check$n_genes, top))
}

# Map requested genes onto the reference's gene names. Returns list(requested, reference).
.match_genes <- function(genes, ref_genes) {
  if (is.null(genes)) return(NULL)
  idx <- match(genes, ref_genes)
  miss <- is.na(idx)
  if (any(miss)) {
    # Seurat spelling of either side (`_` and `|` written as `-`).
    idx[miss] <- match(.seurat_safe_names(genes[miss]), .seurat_safe_names(ref_genes))
  }
  miss <- is.na(idx)
  if (all(miss)) {
    stop(sprintf("None of `genes` is in the reference (%d genes, e.g. %s); received: %s",
                 length(ref_genes), paste(utils::head(ref_genes, 5L), collapse = ", "),
                 paste(utils::head(genes, 10L), collapse = ", ")), call. = FALSE)
  }
  if (any(miss)) {
    warning(sprintf("%d of `genes` not in the reference, dropped: %s", sum(miss),
                    paste(genes[miss], collapse = ", ")), call. = FALSE)
  }
  list(requested = genes[!miss], reference = ref_genes[idx[!miss]])
}

# The reference as an AnnData (or a SpaLSTFModel, returned as is).
.as_reference <- function(reference, reference.assay = NULL, slot = "counts") {
  if (inherits(reference, "SpaLSTFModel")) return(reference)
  if (inherits(reference, "anndata._core.anndata.AnnData")) return(reference)
  if (methods::is(reference, "Seurat")) {
    return(SeuratToAnnData(reference, assay = reference.assay, slot = slot, coords = FALSE))
  }
  if (methods::is(reference, "SingleCellExperiment")) {
    return(SCEToAnnData(reference, X.name = reference.assay, coords = FALSE))
  }
  if (is.matrix(reference) || inherits(reference, "Matrix")) {
    return(.matrix_to_anndata(reference, "reference"))
  }
  stop("`reference` must be a Seurat object, a SingleCellExperiment, a genes x cells matrix ",
       "with gene names, a Python AnnData or a SpaLSTFModel; received: ",
       paste(class(reference), collapse = "/"), call. = FALSE)
}

.matrix_to_anndata <- function(x, arg) {
  if (is.null(rownames(x)) || anyNA(rownames(x)) || anyDuplicated(rownames(x))) {
    stop(sprintf("`%s` must have unique gene names as row names (genes x cells).", arg),
         call. = FALSE)
  }
  cells <- colnames(x) %||% as.character(seq_len(ncol(x)))
  .anndata_from_parts(list(
    x = .matrix_parts(x, arg), obs = .frame_parts(data.frame(row.names = cells), cells),
    var = .frame_parts(data.frame(row.names = rownames(x)), rownames(x))
  ))
}

.ref_genes <- function(ref) {
  if (inherits(ref, "SpaLSTFModel")) return(ref$target.genes)
  as.character(reticulate::py_to_r(.bridge()$var_names(ref)))
}

# Fit-and-impute (or model.impute) on AnnData inputs; returns R matrices genes x cells.
# `check`: .self_check_options() (for a fit; a model is not refitted, so it has none);
# `spatial`: .spatial_option()$py.
.impute_core <- function(st_ad, ref, genes, log.normalized, opts, check = NULL, spatial = NULL,
                         verbose = FALSE) {
  sp <- .spalstf_module()
  matched <- .match_genes(genes, .ref_genes(ref))
  if (!is.null(spatial)) opts$spatial <- spatial
  if (inherits(ref, "SpaLSTFModel")) {
    if (isTRUE(check$self_check)) {
      stop("The self-check (`self.check`) runs when Impute() fits on a reference; ",
           "a SpaLSTFModel is not refitted.", call. = FALSE)
    }
    if (!is.null(matched)) {
      bad <- setdiff(matched$reference, ref$target.genes)
      if (length(bad)) {
        stop("`genes` must be target genes of the model; not in it: ",
             paste(bad, collapse = ", "), call. = FALSE)
      }
    }
    opts$epochs <- NULL
    res <- .py_try(do.call(ref$py$impute, c(list(st_ad, log_normalized = log.normalized), opts)))
  } else {
    args <- c(list(st_ad, ref),
              if (!is.null(matched)) list(genes = as.list(matched$reference)) else list(),
              list(log_normalized = log.normalized), opts, check)
    res <- .py_try(do.call(sp$impute, args))
  }
  parts <- reticulate::py_to_r(.py_try(.bridge()$result_parts(res)))
  cells <- as.character(parts$obs_names)
  ref_names <- as.character(parts$var_names)
  out_names <- if (!is.null(matched)) {
    matched$requested[match(ref_names, matched$reference)]
  } else {
    ref_names
  }
  out_names[is.na(out_names)] <- ref_names[is.na(out_names)]
  keep <- if (!is.null(matched)) match(matched$requested, out_names) else seq_along(out_names)
  keep <- keep[!is.na(keep)]
  mean <- .matrix_from_parts(parts$x, out_names, cells)[keep, , drop = FALSE]
  layer <- function(p) {
    if (is.null(p)) return(NULL)
    .matrix_from_parts(p, out_names, cells)[keep, , drop = FALSE]
  }
  self_check <- .self_check_summary(parts$provenance$self_check)
  if (verbose && !is.null(self_check)) .self_check_message(self_check)
  confidence <- .gene_confidence(parts$provenance$gene_confidence, ref_names[keep])
  if (!is.null(confidence)) rownames(confidence) <- rownames(mean)
  # lower / upper: the interval, present where the learnt stack combined the predictions;
  # confidence: expected_pcc and reference_pcc per gene (rows: the genes of `mean`), or NULL
  # counts: the values at each cell's depth (raw-counts input), or NULL; proportions: units x
  # cells, the spot deconvolution's (with the "deconvolution" predictor), or NULL
  proportions <- if (!is.null(parts$proportions)) {
    .matrix_from_parts(parts$proportions, as.character(parts$proportion_units), cells)
  }
  list(mean = mean, std = layer(parts$std), lower = layer(parts$lower),
       upper = layer(parts$upper), counts = layer(parts$counts), proportions = proportions,
       provenance = parts$provenance, self_check = self_check,
       confidence = confidence, python = res)
}

# ----------------------------------------------------------------------------- methods
#' @describeIn Impute For Seurat objects: adds the assay \code{new.assay.name} whose \code{data}
#'   slot holds the imputations (its \code{counts} slot, with raw-counts input, the same
#'   values as expected counts at each cell's depth, the cell's total over the known genes:
#'   with the learnt combination the Poisson means whose expected measurement the values
#'   are, above \code{expm1(data) * depth / 1e4} where counts are few; else empty), the assay
#'   \code{paste0(new.assay.name, ".std")} whose \code{data} slot holds their uncertainty
#'   (key \code{"spalstfstd_"} for \code{"SpaLSTF.std"}) and, with the stack, the assays
#'   \code{paste0(new.assay.name, ".lower")} and \code{paste0(new.assay.name, ".upper")}
#'   holding the interval (keys \code{"spalstflower_"}, \code{"spalstfupper_"}), and with
#'   the \code{"deconvolution"} predictor the assay \code{paste0(new.assay.name,
#'   ".proportions")}, whose \code{data} slot holds each cell's or spot's proportions of the
#'   reference's cell types (or clusters), units x cells; the
#'   Python provenance in \code{Misc(object[[new.assay.name]], "spalstf")}, each gene's
#'   \code{expected_pcc} and \code{reference_pcc} (with a self-check) in its feature meta
#'   data, parameters and the
#'   self-check summary in \code{Tool(object, "Impute")} and the command in
#'   \code{object@commands}. Assays of these names are replaced (with a warning); one this run
#'   does not make (e.g. the interval, with the fixed blend) is removed. The default assay is
#'   unchanged unless \code{set.default = TRUE}.
#' @param assay Assay of \code{object} to read (default: its default assay).
#' @param reference.assay Assay of the reference (Seurat; default: its default assay) or assay
#'   name (SingleCellExperiment; default \code{"counts"}).
#' @param slot Slot read from both objects: \code{"counts"} (raw counts, default) or
#'   \code{"data"} (log-normalised values, used as given).
#' @param new.assay.name Name of the assay (Seurat) or alternative experiment (SCE) to add;
#'   for Seurat, the uncertainty goes to the assay \code{paste0(new.assay.name, ".std")} and
#'   the interval to \code{paste0(new.assay.name, c(".lower", ".upper"))}.
#' @param set.default Make the new assay the default assay.
#' @param n.samples The network's reverse-diffusion samples per cell (default 4): their mean is
#'   its prediction. Only with \code{predictors} including \code{"network"}.
#' @param n.steps The network's reverse-diffusion steps (default 5). Only with
#'   \code{predictors} including \code{"network"}.
#' @param epochs The network's training epochs (default 60, with early stopping). Only with
#'   \code{predictors} including \code{"network"}.
#' @param seed Random seed: the same seed gives the same values as Python's
#'   \code{spalstf.impute(..., seed = seed)} on the same data (CPU).
#' @param device \code{"auto"}, \code{"cpu"} or \code{"cuda"}.
#' @param verbose Show progress and the self-check's median correlations.
#' @param self.check \code{"auto"} (default: when \code{object} has at least 8 known genes),
#'   \code{TRUE} or \code{FALSE}: run the self-check (see Details). Only when fitting on a
#'   reference, not with a \code{SpaLSTFModel}.
#' @param self.check.folds Number of groups of known genes the self-check hides in turn
#'   (default 2).
#' @param select \code{"auto"} (default) or \code{NULL}, as in Python (both pass to
#'   \code{spalstf.impute} as they are). Earlier versions took candidate settings here
#'   (e.g. \code{list(residual_weight = c(0.5, 1))}); the self-check now learns the weights
#'   of the stack instead, and anything else is an error. For the fixed blend, pass
#'   \code{combine = "blend"} and its settings in \code{...}.
#' @param spatial The cells' coordinates for the spatial context: \code{NULL} (default) those
#'   of \code{object} (a Seurat image, a SpatialExperiment's \code{spatialCoords()}, a reduced
#'   dimension \code{"spatial"}, or meta data columns \code{x}/\code{y} and the like, as in
#'   \code{\link{SeuratToAnnData}}), when it has any; two meta data column names (x, y);
#'   a numeric cells x dimensions matrix (row names, when present, matched to the cells);
#'   \code{FALSE}: no spatial context.
#' @export
Impute.Seurat <- function(object, reference, genes = NULL, assay = NULL, reference.assay = NULL,
                          slot = "counts", new.assay.name = "SpaLSTF", set.default = FALSE,
                          n.samples = NULL, n.steps = NULL, epochs = NULL, seed = 0L,
                          device = "auto", verbose = TRUE, self.check = "auto",
                          self.check.folds = 2L, select = "auto", spatial = NULL, ...) {
  .need(c("SeuratObject"), "Impute() on Seurat objects")
  genes <- .check_genes(genes)
  slot <- match.arg(slot, c("counts", "data"))
  .check_string(new.assay.name, "new.assay.name")
  set.default <- .check_flag(set.default, "set.default")
  assay <- assay %||% SeuratObject::DefaultAssay(object)
  companions <- .companion_assay_names(new.assay.name)
  if (assay %in% c(new.assay.name, companions)) {
    stop(sprintf(paste0("`new.assay.name` (\"%s\", and \"%s\", \"%s\", \"%s\" for the ",
                        "standard deviation and the interval, \"%s\" for the proportions) ",
                        "must "),
                 new.assay.name, companions[["std"]], companions[["lower"]],
                 companions[["upper"]], companions[["proportions"]]),
         sprintf("differ from `assay`, the input (\"%s\").", assay), call. = FALSE)
  }
  opts <- .py_options(seed, device, n.samples, n.steps, epochs, verbose, list(...))
  check <- .self_check_options(self.check, self.check.folds, select)
  where <- .spatial_option(spatial, colnames(object))
  st_ad <- SeuratToAnnData(object, assay = assay, slot = slot, coords = where$coords)
  ref <- .as_reference(reference, reference.assay, slot)
  res <- .impute_core(st_ad, ref, genes, identical(slot, "data"), opts, check, where$py,
                      verbose = opts$progress)
  cells <- colnames(object)
  if (!identical(colnames(res$mean), cells)) {
    stop("Internal error: the cells returned by Python differ from the object's.", call. = FALSE)
  }
  requested <- rownames(res$mean)
  object <- .add_imputation(object, res$mean, res$std, new.assay.name, res$provenance,
                            lower = res$lower, upper = res$upper, confidence = res$confidence,
                            counts = res$counts, proportions = res$proportions)
  if (set.default) SeuratObject::DefaultAssay(object) <- new.assay.name
  params <- c(list(genes = requested, assay = assay, slot = slot,
                   new.assay.name = new.assay.name,
                   std.assay.name = .std_assay_name(new.assay.name),
                   reference = if (inherits(ref, "SpaLSTFModel")) "SpaLSTFModel" else "fit",
                   spalstf.version = .spalstf_py_version()), opts)
  if (!is.null(res$lower)) params$interval.assay.names <- unname(companions[c("lower", "upper")])
  if (!is.null(res$proportions)) params$proportions.assay.name <- companions[["proportions"]]
  params$self_check <- res$self_check
  object <- .set_tool(object, params)
  object <- SeuratObject::LogSeuratCommand(object = object)
  object
}

# The assay that holds the standard deviation of the imputations in `new.assay.name`.
.std_assay_name <- function(new.assay.name) paste0(new.assay.name, ".std")

# The assays beside `new.assay.name` that describe its values: the standard deviation and the
# interval's bounds, named by what they hold.
.companion_assay_names <- function(new.assay.name) {
  c(std = .std_assay_name(new.assay.name), lower = paste0(new.assay.name, ".lower"),
    upper = paste0(new.assay.name, ".upper"),
    proportions = paste0(new.assay.name, ".proportions"))
}

# "a", "a" and "b", "a", "b" and "c".
.and_list <- function(x) {
  if (length(x) < 2L) return(x)
  paste(paste(utils::head(x, -1L), collapse = ", "), "and", x[length(x)])
}

# Adds the imputations to a Seurat object: the assay `new.assay.name` (data slot = `mean`,
# provenance in Misc(, "spalstf")) and, beside it, the assays .companion_assay_names():
# paste0(new.assay.name, ".std") (data slot = `std`) and, where given, ".lower" and ".upper"
# (the interval), so that subset(), merge() and the plots keep them aligned. `mean`, `std`,
# `lower`, `upper`: genes x cells, the requested gene names as row names (kept in the feature
# meta data column feature_name; Seurat spells `_` as `-`), the cells of `object` as column
# names; `counts` (the same shape, or NULL) goes to the counts slot of `new.assay.name`, and
# `proportions` (units x cells, or NULL: the spot deconvolution's) to the assay
# paste0(new.assay.name, ".proportions"). A companion assay left from an earlier run that this one does not give is removed:
# it would no longer match the new values. `confidence`: NULL or .gene_confidence()'s
# data.frame (rows: the genes of `mean`), whose columns expected_pcc and reference_pcc join
# the feature meta data of `new.assay.name`. Shared by Impute() and
# spalstf.io.write_rds(base =) (R/rds.R), so both write the same object.
.add_imputation <- function(object, mean, std, new.assay.name, provenance = NULL,
                            lower = NULL, upper = NULL, confidence = NULL,
                            counts = NULL, proportions = NULL) {
  extra <- list(std = std, lower = lower, upper = upper)
  if (!is.null(counts) && !identical(dimnames(counts), dimnames(mean))) {
    stop("Internal error: the imputed counts must have the genes and cells of the values.",
         call. = FALSE)
  }
  if (!identical(colnames(mean), colnames(object)) ||
      any(vapply(extra, function(m) !is.null(m) && !identical(dimnames(m), dimnames(mean)),
                 TRUE))) {
    stop("Internal error: the imputed values, their standard deviation and interval must ",
         "have the cells of the object, in its order.", call. = FALSE)
  }
  if (!is.null(proportions) && !identical(colnames(proportions), colnames(object))) {
    stop("Internal error: the proportions must have the cells of the object, in its order.",
         call. = FALSE)
  }
  extra$proportions <- proportions  # its rows are the units, not the genes
  names.extra <- .companion_assay_names(new.assay.name)
  present <- intersect(c(new.assay.name, names.extra), SeuratObject::Assays(object))
  if (length(present)) {
    warning(sprintf("Assay%s %s replaced.", if (length(present) > 1L) "s" else "",
                    .and_list(paste0("\"", present, "\""))), call. = FALSE)
  }
  a <- .data_assay(mean, new.assay.name, counts = counts)
  if (!is.null(provenance)) SeuratObject::Misc(a, slot = "spalstf") <- provenance
  if (!is.null(confidence)) {
    if (!identical(rownames(confidence), rownames(mean))) {
      stop("Internal error: the genes' expected PCC must be those of the imputed values.",
           call. = FALSE)
    }
    for (column in names(confidence)) a@meta.features[[column]] <- confidence[[column]]
  }
  # Assigning over an assay of the same name replaces it (the default assay too).
  object[[new.assay.name]] <- a
  for (what in names(names.extra)) {
    name <- names.extra[[what]]
    if (!is.null(extra[[what]])) {
      object[[name]] <- .data_assay(extra[[what]], name)
    } else if (name %in% present) {
      # a previous run's uncertainty would no longer match the new values
      if (identical(SeuratObject::DefaultAssay(object), name)) {
        SeuratObject::DefaultAssay(object) <- new.assay.name
      }
      object[[name]] <- NULL
    }
  }
  object
}

# An assay named `name` whose data slot holds `values` (genes x cells, any gene names: Seurat
# spells `_` as `-`, the names as given stay in the feature meta data column feature_name)
# and, where given, whose counts slot holds `counts` (the same genes and cells).
.data_assay <- function(values, name, counts = NULL) {
  requested <- rownames(values)
  rownames(values) <- .seurat_safe_names(requested)
  if (is.null(counts)) {
    a <- SeuratObject::CreateAssayObject(data = values)
  } else {
    # CreateAssayObject takes counts or data, not both: counts first (all genes and cells
    # kept), then the values as the data slot
    rownames(counts) <- rownames(values)
    a <- SeuratObject::CreateAssayObject(counts = counts, min.cells = 0, min.features = 0)
    a <- SeuratObject::SetAssayData(a, slot = "data", new.data = values)
  }
  a@meta.features[[.feature_name_col]] <- requested
  SeuratObject::Key(a) <- .assay_key(name)
  a
}

.set_tool <- function(object, params) {
  object@tools[["Impute"]] <- params
  object
}

#' @describeIn Impute For SingleCellExperiment objects: adds the alternative experiment
#'   \code{new.assay.name} with assays \code{logcounts} (the imputations), \code{counts}
#'   (with raw-counts input: the same values as expected counts at each cell's depth), \code{std} and,
#'   with the stack, \code{lower} and \code{upper} (the interval), with the
#'   \code{"deconvolution"} predictor the alternative experiment
#'   \code{paste0(new.assay.name, ".proportions")} (assay \code{proportions}: units x cells),
#'   and, with a
#'   self-check, the \code{rowData} columns \code{expected_pcc} and \code{reference_pcc}; the
#'   parameters and the self-check summary (\code{$self_check}) go to
#'   \code{metadata(object)[["SpaLSTF"]]}.
#' @export
Impute.SingleCellExperiment <- function(object, reference, genes = NULL, assay = NULL,
                                        reference.assay = NULL, slot = "counts",
                                        new.assay.name = "SpaLSTF", n.samples = NULL,
                                        n.steps = NULL, epochs = NULL, seed = 0L,
                                        device = "auto", verbose = TRUE, self.check = "auto",
                                        self.check.folds = 2L, select = "auto", spatial = NULL,
                                        ...) {
  .need(c("SingleCellExperiment", "SummarizedExperiment", "S4Vectors"),
        "Impute() on SingleCellExperiment objects")
  genes <- .check_genes(genes)
  slot <- match.arg(slot, c("counts", "data"))
  .check_string(new.assay.name, "new.assay.name")
  opts <- .py_options(seed, device, n.samples, n.steps, epochs, verbose, list(...))
  check <- .self_check_options(self.check, self.check.folds, select)
  where <- .spatial_option(spatial, colnames(object) %||% as.character(seq_len(ncol(object))))
  st_ad <- SCEToAnnData(object, X.name = assay, coords = where$coords)
  ref <- .as_reference(reference, reference.assay, slot)
  res <- .impute_core(st_ad, ref, genes, identical(slot, "data"), opts, check, where$py,
                      verbose = opts$progress)
  assays <- list(logcounts = res$mean)
  for (what in c("counts", "std", "lower", "upper")) {
    if (!is.null(res[[what]])) assays[[what]] <- res[[what]]
  }
  alt <- SingleCellExperiment::SingleCellExperiment(assays = assays)
  for (column in names(res$confidence)) {
    SummarizedExperiment::rowData(alt)[[column]] <- res$confidence[[column]]
  }
  SingleCellExperiment::altExp(object, new.assay.name) <- alt
  if (!is.null(res$proportions)) {
    SingleCellExperiment::altExp(object, paste0(new.assay.name, ".proportions")) <-
      SingleCellExperiment::SingleCellExperiment(assays = list(proportions = res$proportions))
  }
  md <- S4Vectors::metadata(object)
  md[["SpaLSTF"]] <- c(list(genes = rownames(res$mean), assay = assay %||% "counts",
                            slot = slot, new.assay.name = new.assay.name,
                            spalstf.version = .spalstf_py_version(),
                            provenance = res$provenance), opts)
  md[["SpaLSTF"]]$self_check <- res$self_check
  S4Vectors::metadata(object) <- md
  object
}

#' @describeIn Impute For genes x cells matrices (\code{matrix} or any \code{Matrix}, e.g.
#'   \code{dgCMatrix}, with gene names as row names): returns a genes x cells matrix of
#'   imputations with \code{attr(, "std")} the uncertainty, \code{attr(, "lower")} and
#'   \code{attr(, "upper")} the interval (with the stack), \code{attr(, "counts")} the
#'   values as expected counts at each cell's depth (raw-counts input), \code{attr(, "proportions")}
#'   the spot deconvolution's proportions (units x cells; with the \code{"deconvolution"}
#'   predictor), \code{attr(, "spalstf")} the
#'   provenance, \code{attr(, "self_check")} the self-check summary and, with it,
#'   \code{attr(, "expected_pcc")} and \code{attr(, "reference_pcc")} (named by gene).
#' @param log.normalized Matrices only: both inputs hold log-normalised values.
#' @export
Impute.matrix <- function(object, reference, genes = NULL, log.normalized = FALSE,
                          reference.assay = NULL, n.samples = NULL, n.steps = NULL,
                          epochs = NULL, seed = 0L, device = "auto", verbose = TRUE,
                          self.check = "auto", self.check.folds = 2L, select = "auto",
                          spatial = NULL, ...) {
  genes <- .check_genes(genes)
  log.normalized <- .check_flag(log.normalized, "log.normalized")
  opts <- .py_options(seed, device, n.samples, n.steps, epochs, verbose, list(...))
  check <- .self_check_options(self.check, self.check.folds, select)
  where <- .spatial_option(spatial, colnames(object) %||% as.character(seq_len(ncol(object))),
                           converters = FALSE)
  st_ad <- .matrix_to_anndata(object, "object")
  ref <- .as_reference(reference, reference.assay, if (log.normalized) "data" else "counts")
  res <- .impute_core(st_ad, ref, genes, log.normalized, opts, check, where$py,
                      verbose = opts$progress)
  out <- res$mean
  if (is.null(colnames(object))) colnames(out) <- NULL
  attr(out, "std") <- res$std
  attr(out, "lower") <- res$lower
  attr(out, "upper") <- res$upper
  attr(out, "counts") <- res$counts
  attr(out, "proportions") <- res$proportions
  attr(out, "spalstf") <- res$provenance
  attr(out, "self_check") <- res$self_check
  if (!is.null(res$confidence)) {
    attr(out, "expected_pcc") <- stats::setNames(res$confidence$expected_pcc, rownames(out))
    attr(out, "reference_pcc") <- stats::setNames(res$confidence$reference_pcc, rownames(out))
    if (!is.null(res$confidence$expected_pcc_sd)) {
      attr(out, "expected_pcc_sd") <- stats::setNames(res$confidence$expected_pcc_sd,
                                                      rownames(out))
    }
  }
  out
}

#' @rdname Impute
#' @export
Impute.Matrix <- Impute.matrix

#' @describeIn Impute For a Python AnnData (cells x genes): calls \code{spalstf.impute} and
#'   returns its AnnData (Python) unchanged.
#' @export
Impute.python.builtin.object <- function(object, reference, genes = NULL, ...) {
  .check_adata(object, "object")
  ref <- .as_reference(reference)
  genes <- .check_genes(genes)
  if (inherits(ref, "SpaLSTFModel")) {
    return(.py_try(ref$py$impute(object, ...)))
  }
  args <- c(list(object, ref), if (!is.null(genes)) list(genes = as.list(genes)), list(...))
  .py_try(do.call(.spalstf_module()$impute, args))
}
