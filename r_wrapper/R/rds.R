# .rds files for the Python package: spalstf.io.read_rds() and write_rds() embed R through
# rpy2 and call these two functions, so that Seurat and SingleCellExperiment objects become
# AnnData (and back) through the same parts and the same code as SeuratToAnnData(),
# SCEToAnnData(), AnnDataToSeurat() and Impute() (see the top of R/convert.R). Nothing here
# starts Python: R embedded in Python must not call back into it through reticulate.
# Their names and arguments are what spalstf/io/_rds.py calls; change both together.

# Runs f(...) for Python: list(value = ...) or list(error = message), with the warnings
# raised on the way in `warnings` (Python re-raises them as warnings).
.rds_call <- function(f, ...) {
  warned <- character()
  value <- tryCatch(
    withCallingHandlers(
      suppressMessages(suppressPackageStartupMessages(f(...))),
      warning = function(w) {
        warned <<- c(warned, conditionMessage(w))
        invokeRestart("muffleWarning")
      }
    ),
    error = function(e) structure(list(message = conditionMessage(e)), class = "rds_error")
  )
  if (inherits(value, "rds_error")) {
    return(list(error = value$message, warnings = warned))
  }
  list(value = value, warnings = warned)
}

# The object in `path` as parts of an AnnData: list(kind = its class, assay = the Seurat
# assay read (or NULL), parts = object parts). Seurat objects (assay, slot), SingleCellExperiment
# objects (assay = the one that becomes X), matrices (genes x cells) and spacexr's Reference /
# SpatialRNA objects (read without spacexr).
.rds_read <- function(path, assay = NULL, slot = "counts") {
  obj <- readRDS(path)
  cls <- class(obj)
  is_a <- function(what) isTRUE(tryCatch(methods::is(obj, what), error = function(e) FALSE))
  at <- attributes(obj)
  # without spacexr, its S4 objects arrive as objects of an unknown class whose slots are
  # attributes
  rctd <- cls[1L] %in% c("Reference", "SpatialRNA") && !is.null(at$counts)
  if (!rctd && is_a("Seurat")) {
    .need("SeuratObject", "Reading a Seurat object")
    assay <- assay %||% SeuratObject::DefaultAssay(obj)
    return(list(kind = "Seurat", assay = assay,
                parts = .seurat_parts(obj, assay = assay, slot = slot, coords = NULL)))
  }
  if (!rctd && is_a("SingleCellExperiment")) {
    .need(c("SingleCellExperiment", "SummarizedExperiment", "S4Vectors"),
          "Reading a SingleCellExperiment")
    an <- SummarizedExperiment::assayNames(obj)
    if (!is.null(assay) && !assay %in% an) {
      stop(sprintf("`assay` must be one of %s, received: %s", paste(an, collapse = ", "),
                   assay), call. = FALSE)
    }
    return(list(kind = "SingleCellExperiment", assay = assay,
                parts = .sce_parts(obj, X.name = assay, coords = NULL)))
  }
  if (!rctd && (is_a("Matrix") || is.matrix(obj))) {
    genes <- rownames(obj) %||% as.character(seq_len(nrow(obj)))
    cells <- colnames(obj) %||% as.character(seq_len(ncol(obj)))
    return(list(kind = "matrix", parts = list(
      x = .matrix_parts(obj, "the matrix"), obs = .frame_parts(data.frame(row.names = cells), cells),
      var = .frame_parts(data.frame(row.names = genes), genes)
    )))
  }
  if (rctd) {
    counts <- at$counts
    cells <- colnames(counts)
    genes <- rownames(counts)
    obs <- data.frame(row.names = cells)
    if (!is.null(at$nUMI)) obs$nUMI <- as.numeric(at$nUMI[cells])
    if (!is.null(at$cell_types)) {
      ct <- at$cell_types
      obs$cell_type <- factor(as.character(ct[cells]), levels = levels(ct))
    }
    obsm <- list()
    if (!is.null(at$coords)) {
      crd <- as.matrix(as.data.frame(at$coords)[cells, 1:2])
      storage.mode(crd) <- "double"
      obsm$spatial <- unname(crd)
    }
    return(list(kind = cls[1L], parts = list(
      x = .matrix_parts(counts), obs = .frame_parts(obs, cells),
      var = .frame_parts(data.frame(row.names = genes), genes), obsm = obsm
    )))
  }
  stop(sprintf(paste0("%s holds an object of class %s; read_rds reads Seurat objects, ",
                      "SingleCellExperiment objects, matrices and RCTD Reference / ",
                      "SpatialRNA objects"), path, paste(cls, collapse = "/")), call. = FALSE)
}

# Writes the AnnData whose parts are `parts` to `path` as a Seurat object.
# `base` (a path or NULL): add to the Seurat object in `base`, as Impute() does (the same
# .add_imputation()), the values as the assay `new.assay.name`, with the genes' expected
# accuracy (`provenance$gene_confidence`, when there) as feature meta data and, when given,
# `counts` (the values at each cell's depth) as its counts slot; the assays
# paste0(new.assay.name, ".std") (from `std`, matrix parts or NULL), ".lower" / ".upper"
# (from `lower` / `upper`, the interval) and ".proportions" (from `proportions`, the parts of
# the cells x units obsm matrix, whose units are `proportion.units`), each when given.
# Otherwise a new object with the assay `assay`: X in the `slot` ("counts", with the layer
# "data" or "logcounts" as data slot when there is one; or "data"), and `std` in the assay
# paste0(assay, ".std").
.rds_write <- function(path, parts, base = NULL, assay = "RNA", new.assay.name = "SpaLSTF",
                       slot = "counts", std = NULL, provenance = NULL, lower = NULL,
                       upper = NULL, counts = NULL, proportions = NULL,
                       proportion.units = NULL) {
  .need(c("SeuratObject", "Seurat"), "Writing a Seurat object")
  cells <- as.character(parts$obs$index)
  genes <- as.character(parts$var$index)
  values <- function(p) {
    m <- .matrix_from_parts(p, genes, cells)
    if (methods::is(m, "sparseMatrix")) as.matrix(m) else m
  }
  if (!is.null(base)) {
    obj <- readRDS(base)
    if (!methods::is(obj, "Seurat")) {
      stop(sprintf("`base` (%s) must hold a Seurat object, it holds a %s", base,
                   paste(class(obj), collapse = "/")), call. = FALSE)
    }
    if (!setequal(colnames(obj), cells) || length(cells) != ncol(obj)) {
      stop(sprintf(paste0("the cells of `adata` (%d) must be those of `base` (%d); ",
                          "%d of them differ"), length(cells), ncol(obj),
                   length(union(setdiff(cells, colnames(obj)), setdiff(colnames(obj), cells)))),
           call. = FALSE)
    }
    ord <- match(colnames(obj), cells)
    mean <- values(parts$x)[, ord, drop = FALSE]
    ordered <- function(p) if (!is.null(p)) values(p)[, ord, drop = FALSE] else NULL
    confidence <- .gene_confidence(provenance$gene_confidence, genes)
    if (!is.null(confidence)) rownames(confidence) <- rownames(mean)
    shares <- if (!is.null(proportions)) {
      .matrix_from_parts(proportions, as.character(proportion.units), cells)[, ord, drop = FALSE]
    }
    obj <- .add_imputation(obj, mean, ordered(std), new.assay.name, provenance,
                           lower = ordered(lower), upper = ordered(upper),
                           confidence = confidence, counts = ordered(counts),
                           proportions = shares)
  } else {
    slot <- match.arg(slot, c("counts", "data"))
    obj <- .seurat_from_parts(parts, assay = assay,
                              counts = if (slot == "counts") "X" else NULL,
                              data = if (slot == "data") "X" else NULL, project = "SpaLSTF")
    if (!is.null(std)) {
      obj[[.std_assay_name(assay)]] <- .data_assay(values(std), .std_assay_name(assay))
    }
  }
  saveRDS(obj, path)
  invisible(path)
}
