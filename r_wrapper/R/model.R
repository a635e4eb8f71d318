# Models: fit once, predict many times, save and load in the Python format.

.as_model <- function(py) {
  structure(list(
    py = py,
    known.genes = as.character(reticulate::py_to_r(.bridge()$plain(py$known_genes))),
    target.genes = as.character(reticulate::py_to_r(.bridge()$plain(py$target_genes)))
  ), class = "SpaLSTFModel")
}

.check_model <- function(model, arg = "model") {
  if (!inherits(model, "SpaLSTFModel")) {
    stop(sprintf("`%s` must be a SpaLSTFModel (from FitSpaLSTF() or LoadSpaLSTF()), received: %s",
                 arg, paste(class(model), collapse = "/")), call. = FALSE)
  }
  if (reticulate::py_is_null_xptr(model$py)) {
    stop(sprintf(paste0("`%s` points to a Python object of an earlier R session; ",
                        "save models with SaveSpaLSTF() and read them with LoadSpaLSTF()."), arg),
         call. = FALSE)
  }
  model
}

# The input of a fit or predict call as an AnnData.
.as_input <- function(x, assay = NULL, slot = "counts", arg = "object") {
  if (inherits(x, "anndata._core.anndata.AnnData")) return(x)
  if (methods::is(x, "Seurat")) return(SeuratToAnnData(x, assay = assay, slot = slot))
  if (methods::is(x, "SingleCellExperiment")) return(SCEToAnnData(x, X.name = assay))
  if (is.matrix(x) || inherits(x, "Matrix")) return(.matrix_to_anndata(x, arg))
  stop(sprintf(paste0("`%s` must be a Seurat object, a SingleCellExperiment, a genes x cells ",
                      "matrix with gene names or a Python AnnData; received: %s"),
               arg, paste(class(x), collapse = "/")), call. = FALSE)
}

#' Fit a SpaLSTF model on a reference
#'
#' Calls \code{spalstf.fit()}: the model learns to predict \code{target.genes} from
#' \code{known.genes} (the genes your spatial data measures) on the scRNA-seq reference.
#' Given the spatial data \code{st}, it then learns the combination of its base predictions on
#' the ST's own known genes, hidden in turn (\code{Model.self_check}), and keeps it: without
#' it, \code{predict()} combines them with fixed weights and gives no interval.
#'
#' @param reference Seurat object, SingleCellExperiment, genes x cells matrix with gene names,
#'   or a Python AnnData.
#' @param st The spatial data the model will impute (or data like it), as \code{reference};
#'   it must hold the known genes. \code{NULL}: no combination is learnt.
#' @param st.assay Assay of \code{st} (read in the same \code{slot}).
#' @param known.genes Genes measured in the spatial data (the condition).
#' @param target.genes Genes to predict.
#' @param reference.assay Assay of the reference (default: the default assay, or
#'   \code{"counts"} for a SingleCellExperiment).
#' @param slot \code{"counts"} (raw counts) or \code{"data"} (log-normalised values).
#' @param seed,device,epochs,verbose As in \code{\link{Impute}}.
#' @param ... Further options of \code{spalstf.fit} under their Python names.
#' @return A \code{SpaLSTFModel}: a list with \code{py} (the Python \code{spalstf.Model}),
#'   \code{known.genes} and \code{target.genes}. Use it with \code{predict()},
#'   \code{\link{Impute}(object, model)} and \code{\link{SaveSpaLSTF}}.
#' @examples
#' \dontrun{
#' model <- FitSpaLSTF(sc, known.genes = rownames(st), target.genes = c("CD3E", "MS4A1"),
#'                     st = st)
#' imputed <- predict(model, st)
#' }
#' @export
FitSpaLSTF <- function(reference, known.genes, target.genes, reference.assay = NULL,
                       slot = "counts", seed = 0L, device = "auto", epochs = NULL,
                       verbose = TRUE, st = NULL, st.assay = NULL, ...) {
  known.genes <- .check_genes(known.genes, "known.genes")
  target.genes <- .check_genes(target.genes, "target.genes")
  if (is.null(known.genes) || is.null(target.genes)) {
    stop("`known.genes` and `target.genes` must be given (character vectors).", call. = FALSE)
  }
  slot <- match.arg(slot, c("counts", "data"))
  opts <- .py_options(seed, device, NULL, NULL, epochs, verbose, list(...))
  ref <- .as_input(reference, reference.assay, slot, arg = "reference")
  ref_genes <- .ref_genes(ref)
  known <- .match_genes(known.genes, ref_genes)$reference
  target <- .match_genes(target.genes, ref_genes)$reference
  st_ad <- if (!is.null(st)) .as_input(st, st.assay, slot, arg = "st") else NULL
  py <- .py_try(do.call(.spalstf_module()$fit, c(
    list(ref, as.list(known), as.list(target), log_normalized = identical(slot, "data")), opts
  )))
  if (!is.null(st_ad)) {  # the model keeps the combination learnt (saved with it)
    .py_try(py$self_check(st_ad, ref, seed = as.integer(seed), progress = isTRUE(verbose)))
  }
  .as_model(py)
}

#' @export
print.SpaLSTFModel <- function(x, ...) {
  cat(sprintf("SpaLSTF model: %d known genes -> %d target genes\n",
              length(x$known.genes), length(x$target.genes)))
  cat("  targets:", paste(utils::head(x$target.genes, 8L), collapse = ", "),
      if (length(x$target.genes) > 8L) "..." else "", "\n")
  invisible(x)
}

#' Impute with a fitted SpaLSTF model
#'
#' @param object A \code{SpaLSTFModel}.
#' @param newdata Spatial data: Seurat object, SingleCellExperiment, genes x cells matrix with
#'   gene names, or Python AnnData; it must contain the model's known genes.
#' @param assay Assay of \code{newdata} (Seurat, SingleCellExperiment).
#' @param slot \code{"counts"} or \code{"data"}.
#' @param n.samples,n.steps,seed,device,verbose As in \code{\link{Impute}}.
#' @param ... Further options of \code{Model.impute} under their Python names.
#' @return A genes x cells matrix of log-normalised imputations (the model's target genes),
#'   with \code{attr(, "std")} their uncertainty and, when the model holds a learnt stack
#'   (see \code{\link{Impute}}), \code{attr(, "lower")} and \code{attr(, "upper")} the
#'   interval; with raw counts (\code{slot = "counts"}), \code{attr(, "counts")} the values
#'   as expected counts at each cell's depth; with the \code{"deconvolution"} predictor,
#'   \code{attr(, "proportions")} the spots' proportions of reference units. To add the assays of the values and of their uncertainty to a Seurat object
#'   instead, call \code{\link{Impute}(object, model)}.
#' @importFrom stats predict
#' @export
predict.SpaLSTFModel <- function(object, newdata, assay = NULL, slot = "counts",
                                 n.samples = NULL, n.steps = NULL, seed = 0L, device = "auto",
                                 verbose = TRUE, ...) {
  .check_model(object, "object")
  slot <- match.arg(slot, c("counts", "data"))
  opts <- .py_options(seed, device, n.samples, n.steps, NULL, verbose, list(...))
  st_ad <- .as_input(newdata, assay, slot, arg = "newdata")
  res <- .impute_core(st_ad, object, NULL, identical(slot, "data"), opts)
  out <- res$mean
  attr(out, "std") <- res$std
  attr(out, "lower") <- res$lower
  attr(out, "upper") <- res$upper
  attr(out, "counts") <- res$counts
  attr(out, "proportions") <- res$proportions
  attr(out, "spalstf") <- res$provenance
  out
}

#' Save and load SpaLSTF models
#'
#' The folder format is the Python one (\code{Model.save} / \code{spalstf.load}): a model
#' saved in R loads in Python and the other way round.
#'
#' @param model A \code{SpaLSTFModel}.
#' @param path Folder to write or read.
#' @param overwrite Replace an existing folder.
#' @param device Where to load the weights: \code{"auto"}, \code{"cpu"} or \code{"cuda"}.
#' @return \code{SaveSpaLSTF}: \code{path}, invisibly. \code{LoadSpaLSTF}: a
#'   \code{SpaLSTFModel}.
#' @examples
#' \dontrun{
#' SaveSpaLSTF(model, "lymph_model")
#' model <- LoadSpaLSTF("lymph_model")
#' }
#' @export
SaveSpaLSTF <- function(model, path, overwrite = FALSE) {
  .check_model(model)
  .check_string(path, "path")
  overwrite <- .check_flag(overwrite, "overwrite")
  .py_try(model$py$save(path.expand(path), overwrite = overwrite))
  invisible(path)
}

#' @rdname SaveSpaLSTF
#' @export
LoadSpaLSTF <- function(path, device = "auto") {
  .check_string(path, "path")
  .check_string(device, "device")
  .as_model(.py_try(.spalstf_module()$load(path.expand(path), device = device)))
}

#' Leave-genes-out cross-validation
#'
#' Calls \code{spalstf.evaluate.cross_validate()}: the genes shared by \code{object} and
#' \code{reference} are split into \code{n.folds} folds; each method predicts each fold's
#' genes from the others, and the predictions are scored against the measured values.
#'
#' @param object Spatial data (Seurat, SingleCellExperiment, genes x cells matrix with gene
#'   names, or Python AnnData) holding raw counts.
#' @param reference The scRNA-seq reference (same types), raw counts.
#' @param n.folds Number of gene folds.
#' @param seed Seed of the split and of the methods.
#' @param methods Method names, e.g. \code{c("spalstf", "mean", "knn")} (see the Python
#'   documentation of \code{spalstf.evaluate.baselines}).
#' @param assay,reference.assay Assays to read (Seurat, SingleCellExperiment).
#' @param genes Restrict the evaluation to these shared genes.
#' @param method.options Named list of named lists: options per method, e.g.
#'   \code{list(spalstf = list(self_check_folds = 3L))}.
#' @param clustering Also compare Leiden clusters of the measured values and of each
#'   method's assembled prediction (scanpy's PCA, neighbour graph and Leiden, seeded by
#'   \code{seed}): columns \code{ari}, \code{ami}, \code{nmi} and \code{homogeneity} of
#'   the summary.
#' @return A data.frame of per-gene metrics (one row per truth, method, fold and gene: PCC,
#'   SSIM, RMSE, JS, ...) with \code{attr(, "summary")} the per-method summary data.frame.
#' @examples
#' \dontrun{
#' cv <- CrossValidate(st, sc, n.folds = 5, methods = c("spalstf", "knn"))
#' attr(cv, "summary")
#' }
#' @export
CrossValidate <- function(object, reference, n.folds = 5L, seed = 0L,
                          methods = c("mean", "knn", "spage"), assay = NULL,
                          reference.assay = NULL, genes = NULL, method.options = NULL,
                          clustering = FALSE) {
  n.folds <- .check_count(n.folds, "n.folds", null.ok = FALSE, min = 2L)
  seed <- .check_count(seed, "seed", null.ok = FALSE, min = 0L)
  genes <- .check_genes(genes)
  clustering <- .check_flag(clustering, "clustering")
  if (!is.character(methods) || !length(methods)) {
    stop("`methods` must be a character vector of method names, received: ",
         paste(deparse(methods), collapse = " "), call. = FALSE)
  }
  if (!is.null(method.options) && (!is.list(method.options) || is.null(names(method.options)))) {
    stop("`method.options` must be a named list of named lists, e.g. ",
         "list(spalstf = list(epochs = 5L)).", call. = FALSE)
  }
  method.options <- lapply(method.options, function(o) .py_options(
    0L, "auto", NULL, NULL, NULL, FALSE, o
  )[names(o)])
  st_ad <- .as_input(object, assay, "counts", arg = "object")
  ref <- .as_input(reference, reference.assay, "counts", arg = "reference")
  ev <- .py_try(reticulate::import("spalstf.evaluate", convert = FALSE))
  res <- .py_try(ev$cross_validate(
    st_ad, ref, n_folds = n.folds, seed = seed, methods = as.list(methods),
    genes = if (!is.null(genes)) as.list(genes) else NULL,
    method_options = method.options, clustering = clustering
  ))
  per_gene <- .frame_from_py(res$per_gene)
  summary <- .frame_from_py(res$summary)
  rownames(per_gene) <- NULL
  attr(per_gene, "summary") <- summary
  per_gene
}
