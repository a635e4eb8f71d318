# In-memory converters between Seurat / SingleCellExperiment and AnnData.
# R sends plain parts to the Python helpers of spalstf (spalstf/io/_rbridge.py) and rebuilds
# R objects from plain parts, so nothing depends on reticulate's pandas or scipy handling.
#
# The parts are the one bridge between R objects and AnnData: the R halves (.seurat_parts,
# .sce_parts, .seurat_from_parts, .sce_from_parts) are pure R and start no Python, so that
# spalstf.io.read_rds / write_rds (Python embedding R through rpy2) call them as well and
# assemble the AnnData with the same Python helpers (see R/rds.R). Parts:
#   matrix: list(kind = "dgCMatrix", x, i, p, dim) or list(kind = "dense", values, dim),
#           genes x cells (.matrix_parts);
#   frame:  list(index, names, columns = unnamed list of column encodings) (.frame_parts);
#   object: list(x, obs, var, layers = named list of matrices, obsm = named list of cells x k
#           numeric matrices, uns = named list).

# ------------------------------------------------------------------------------- matrices
.matrix_parts <- function(x, arg = "x") {
  if (inherits(x, "Matrix")) {
    x <- methods::as(methods::as(methods::as(x, "CsparseMatrix"), "generalMatrix"), "dMatrix")
    return(list(kind = "dgCMatrix", x = as.numeric(x@x), i = as.integer(x@i),
                p = as.integer(x@p), dim = as.integer(dim(x))))
  }
  if (is.data.frame(x)) x <- as.matrix(x)
  if (!is.matrix(x) || !(is.numeric(x) || is.logical(x))) {
    stop(sprintf("`%s` must be a numeric matrix or a Matrix (genes x cells), received: %s",
                 arg, paste(class(x), collapse = "/")), call. = FALSE)
  }
  list(kind = "dense", values = as.numeric(x), dim = as.integer(dim(x)))
}

.matrix_from_parts <- function(parts, rownames, colnames) {
  if (inherits(parts, "python.builtin.object")) parts <- reticulate::py_to_r(parts)
  dims <- as.integer(parts$dim)
  dn <- list(as.character(rownames), as.character(colnames))
  if (identical(parts$kind, "dgCMatrix")) {
    methods::new("dgCMatrix", i = as.integer(parts$i), p = as.integer(parts$p),
                 x = as.numeric(parts$x), Dim = dims, Dimnames = dn)
  } else {
    matrix(as.numeric(parts$values), nrow = dims[1L], ncol = dims[2L], dimnames = dn)
  }
}

# ------------------------------------------------------------------------------- data frames
.encode_column <- function(v) {
  if (is.factor(v)) {
    codes <- as.integer(v) - 1L
    codes[is.na(codes)] <- -1L
    return(list(type = "categorical", codes = codes, categories = levels(v),
                ordered = is.ordered(v)))
  }
  if (is.logical(v)) {
    na <- is.na(v)
    v[na] <- FALSE
    return(list(type = "logical", values = v, na = na))
  }
  if (is.integer(v)) {
    na <- is.na(v)
    v[na] <- 0L
    return(list(type = "integer", values = v, na = na))
  }
  if (is.numeric(v)) {
    return(list(type = "numeric", values = as.numeric(v)))
  }
  v <- as.character(v)
  na <- is.na(v)
  v[na] <- ""
  list(type = "character", values = v, na = na)
}

# The parts of an R data.frame (see the top of this file); the index is `index`.
.frame_parts <- function(df, index) {
  df <- as.data.frame(df, stringsAsFactors = FALSE, optional = TRUE)
  keep <- vapply(df, function(v) is.atomic(v) && is.null(dim(v)), TRUE)
  if (any(!keep)) {
    warning("Columns dropped (not atomic vectors): ",
            paste(names(df)[!keep], collapse = ", "), call. = FALSE)
    df <- df[, keep, drop = FALSE]
  }
  cols <- lapply(df, .encode_column)
  names(cols) <- NULL
  list(index = as.character(index), names = as.character(names(df)), columns = cols)
}

# A Python AnnData from object parts (see the top of this file).
.anndata_from_parts <- function(parts) {
  .py_try(.bridge()$anndata_from_parts(parts))
}

.decode_column <- function(enc) {
  type <- enc$type
  if (identical(type, "categorical")) {
    codes <- as.integer(enc$codes)
    codes[codes < 0L] <- NA_integer_
    lev <- as.character(enc$categories)
    return(factor(lev[codes + 1L], levels = lev, ordered = isTRUE(enc$ordered)))
  }
  if (identical(type, "numeric")) {
    v <- as.numeric(enc$values)
    v[is.nan(v)] <- NA_real_
    return(v)
  }
  na <- as.logical(enc$na)
  v <- switch(type,
    integer = as.integer(enc$values),
    logical = as.logical(enc$values),
    as.character(enc$values)
  )
  v[na] <- NA
  v
}

# An R data.frame from a pandas DataFrame (Python object); row names are its index.
.frame_from_py <- function(pydf) {
  .frame_from_enc(reticulate::py_to_r(.bridge()$frame_to_columns(pydf)))
}

.frame_from_enc <- function(enc) {
  index <- as.character(enc$index)
  cols <- lapply(enc$columns, .decode_column)
  names(cols) <- as.character(enc$names)
  df <- if (length(cols)) {
    as.data.frame(cols, stringsAsFactors = FALSE, optional = TRUE)
  } else {
    data.frame(row.names = seq_along(index))[, 0L, drop = FALSE]
  }
  if (nrow(df) != length(index)) df <- df[seq_along(index), , drop = FALSE]
  rownames(df) <- if (length(index)) index else NULL
  df
}

# ------------------------------------------------------------------------------- names
# The key of an assay named `name` (its feature names in FetchData() and plots:
# "spalstf_CD3E" for the assay "SpaLSTF", "spalstfstd_CD3E" for "SpaLSTF.std").
.assay_key <- function(name) paste0(tolower(gsub("[^A-Za-z0-9]", "", name)), "_")

# Seurat (4.x) refuses `_` (and `|`) in feature names and replaces them with `-`. Converters
# store the original names in the feature meta data column `feature_name` and use them again
# on the way back, so nothing is lost or mismatched.
.feature_name_col <- "feature_name"

.seurat_safe_names <- function(x) {
  safe <- gsub("[_|]", "-", x)
  if (anyDuplicated(safe)) safe <- make.unique(safe)
  safe
}

# Original feature names of a Seurat assay (the `feature_name` column where present).
.seurat_feature_names <- function(assay_obj) {
  mf <- assay_obj@meta.features
  nm <- rownames(assay_obj)
  if (.feature_name_col %in% colnames(mf)) {
    orig <- as.character(mf[nm, .feature_name_col])
    ok <- !is.na(orig) & nzchar(orig)
    nm[ok] <- orig[ok]
  }
  nm
}

# ------------------------------------------------------------------------------- checks
.need <- function(pkgs, what) {
  missing <- pkgs[!vapply(pkgs, requireNamespace, TRUE, quietly = TRUE)]
  if (length(missing)) {
    stop(sprintf("%s needs the R package(s) %s; install them first.", what,
                 paste(missing, collapse = ", ")), call. = FALSE)
  }
}

.check_string <- function(x, arg, null.ok = FALSE) {
  if (null.ok && is.null(x)) return(invisible(x))
  if (!is.character(x) || length(x) != 1L || is.na(x) || !nzchar(x)) {
    stop(sprintf("`%s` must be one non-empty string, received: %s", arg,
                 paste(utils::capture.output(utils::str(x)), collapse = " ")), call. = FALSE)
  }
  invisible(x)
}

.check_adata <- function(adata, arg = "adata") {
  if (!inherits(adata, "anndata._core.anndata.AnnData")) {
    stop(sprintf("`%s` must be an AnnData object (Python, through reticulate), received: %s",
                 arg, paste(class(adata), collapse = "/")), call. = FALSE)
  }
}

# ------------------------------------------------------------------------------- coordinates
.coord_candidates <- list(c("x", "y"), c("imagecol", "imagerow"), c("x_coord", "y_coord"),
                          c("X", "Y"), c("x_centroid", "y_centroid"))

.meta_coords <- function(meta, coords, arg = "coords") {
  if (is.null(coords)) {
    for (cand in .coord_candidates) {
      if (all(cand %in% colnames(meta)) && all(vapply(meta[cand], is.numeric, TRUE))) {
        coords <- cand
        break
      }
    }
    if (is.null(coords)) return(NULL)
  }
  if (isFALSE(coords)) return(NULL)
  if (!is.character(coords) || length(coords) != 2L || !all(coords %in% colnames(meta))) {
    stop(sprintf("`%s` must name two numeric meta data columns (x, y); available: %s; received: %s",
                 arg, paste(colnames(meta), collapse = ", "), paste(coords, collapse = ", ")),
         call. = FALSE)
  }
  m <- as.matrix(meta[, coords, drop = FALSE])
  storage.mode(m) <- "double"
  m
}

# Spatial coordinates of a Seurat object: list(spatial = cells x 2 or NULL, uns = list()).
.seurat_coords <- function(object, assay, coords = NULL) {
  cells <- colnames(object)
  out <- matrix(NA_real_, length(cells), 2L, dimnames = list(cells, c("x", "y")))
  found <- FALSE
  uns_spatial <- list()
  images <- list()
  for (img in SeuratObject::Images(object)) {
    im <- object@images[[img]]
    if (methods::is(im, "VisiumV1")) {
      crd <- im@coordinates
      cc <- intersect(rownames(crd), cells)
      out[cc, ] <- cbind(as.numeric(crd[cc, "imagecol"]), as.numeric(crd[cc, "imagerow"]))
      sf <- im@scale.factors
      uns_spatial[[img]] <- list(
        images = list(lowres = im@image),
        scalefactors = list(
          tissue_lowres_scalef = sf$lowres, tissue_hires_scalef = sf$hires,
          spot_diameter_fullres = sf$spot, fiducial_diameter_fullres = sf$fiducial
        ),
        spot_radius = im@spot.radius,
        array = as.matrix(crd[cc, c("tissue", "row", "col"), drop = FALSE]),
        array_cells = cc
      )
      images[[img]] <- "VisiumV1"
      found <- TRUE
    } else if (methods::is(im, "FOV")) {
      crd <- SeuratObject::GetTissueCoordinates(im, which = "centroids")
      cc <- intersect(as.character(crd$cell), cells)
      rownames(crd) <- as.character(crd$cell)
      out[cc, ] <- cbind(as.numeric(crd[cc, "x"]), as.numeric(crd[cc, "y"]))
      images[[img]] <- "FOV"
      found <- TRUE
    }
  }
  if (!found) {
    m <- .meta_coords(object@meta.data, coords)
    if (is.null(m)) return(list(spatial = NULL, uns = list(), images = list()))
    out[] <- m
    images[["meta.data"]] <- paste(colnames(m), collapse = ",")
  }
  list(spatial = out, uns = uns_spatial, images = images)
}

# ------------------------------------------------------------------------------- Seurat
#' Convert a Seurat object to AnnData (in memory)
#'
#' The same conversion reads Seurat objects from .rds files in Python
#' (\code{spalstf.io.read_rds}, which runs this package's R code through rpy2).
#'
#' @param object A Seurat (v4) object.
#' @param assay Assay to convert (default: the default assay).
#' @param slot Slot that becomes \code{X} (\code{"counts"} by default); the \code{data} slot
#'   becomes \code{layers[["data"]]} when it differs from the counts.
#' @param coords Where the spatial coordinates come from when the object has no image:
#'   \code{NULL} looks for meta data columns \code{x}/\code{y} (or \code{imagecol}/\code{imagerow},
#'   \code{x_coord}/\code{y_coord}, \code{X}/\code{Y}); two column names pick them; \code{FALSE}
#'   skips them.
#' @return A Python \code{anndata.AnnData} (cells x genes) with \code{obs} = meta data,
#'   \code{var} = the assay's feature meta data, \code{obsm[["spatial"]]} = coordinates
#'   (FOV centroids; Visium full-resolution pixel coordinates, column then row, as in scanpy,
#'   with the image and scale factors in \code{uns[["spatial"]]}; or meta data columns),
#'   and reductions as \code{obsm[["X_<name>"]]}. Gene names are the original names (see
#'   \code{\link{AnnDataToSeurat}}).
#' @examples
#' \dontrun{
#' adata <- SeuratToAnnData(seurat_object)
#' }
#' @export
SeuratToAnnData <- function(object, assay = NULL, slot = "counts", coords = NULL) {
  .anndata_from_parts(.seurat_parts(object, assay = assay, slot = slot, coords = coords))
}

# The parts of SeuratToAnnData()'s AnnData (pure R; spalstf.io.read_rds calls it too).
.seurat_parts <- function(object, assay = NULL, slot = "counts", coords = NULL) {
  .need(c("SeuratObject"), "SeuratToAnnData()")
  if (!methods::is(object, "Seurat")) {
    stop("`object` must be a Seurat object, received: ", paste(class(object), collapse = "/"),
         call. = FALSE)
  }
  assay <- assay %||% SeuratObject::DefaultAssay(object)
  .check_string(assay, "assay")
  if (!assay %in% SeuratObject::Assays(object)) {
    stop(sprintf("`assay` must be one of %s, received: %s",
                 paste(SeuratObject::Assays(object), collapse = ", "), assay), call. = FALSE)
  }
  .check_string(slot, "slot")
  a <- object[[assay]]
  x <- SeuratObject::GetAssayData(a, slot = slot)
  if (prod(dim(x)) == 0) {
    stop(sprintf("`slot` \"%s\" of assay \"%s\" is empty.", slot, assay), call. = FALSE)
  }
  genes <- .seurat_feature_names(a)
  cells <- colnames(object)
  layers <- list()
  if (identical(slot, "counts")) {
    d <- SeuratObject::GetAssayData(a, slot = "data")
    if (prod(dim(d)) > 0 && !identical(d, x)) layers$data <- .matrix_parts(d)
  }
  var <- a@meta.features
  var <- var[, setdiff(colnames(var), .feature_name_col), drop = FALSE]
  obsm <- list()
  crd <- .seurat_coords(object, assay, coords)
  if (!is.null(crd$spatial)) obsm$spatial <- unname(crd$spatial)
  for (red in names(object@reductions)) {
    emb <- SeuratObject::Embeddings(object, reduction = red)
    obsm[[paste0("X_", red)]] <- unname(emb[cells, , drop = FALSE])
  }
  uns <- list(seurat = list(assay = assay, slot = slot, images = crd$images,
                            project = SeuratObject::Project(object)))
  if (length(crd$uns)) uns$spatial <- crd$uns
  list(x = .matrix_parts(x), obs = .frame_parts(object@meta.data, cells),
       var = .frame_parts(var, genes), layers = layers, obsm = obsm, uns = uns)
}

.anndata_parts <- function(adata) {
  .check_adata(adata)
  reticulate::py_to_r(.py_try(.bridge()$anndata_parts(adata)))
}

#' Convert AnnData to a Seurat object (in memory)
#'
#' The same conversion writes Seurat objects to .rds files in Python
#' (\code{spalstf.io.write_rds}, which runs this package's R code through rpy2).
#'
#' @param adata A Python \code{anndata.AnnData} (cells x genes), e.g. from
#'   \code{\link{SeuratToAnnData}} or \code{anndata$read_h5ad()}.
#' @param assay Name of the assay to create.
#' @param counts Where the counts are: \code{"X"} or the name of a layer.
#' @param data Layer that fills the \code{data} slot (\code{NULL}: the layer \code{"data"} or
#'   \code{"logcounts"} when present, otherwise the counts, as \code{CreateSeuratObject} does).
#' @return A Seurat object: counts, meta data (\code{obs}), feature meta data (\code{var}),
#'   \code{obsm[["spatial"]]} as an image (a \code{VisiumV1} when \code{uns[["spatial"]]}
#'   holds the Visium image and scale factors, otherwise an \code{FOV} of centroids named
#'   \code{"fov"}), other numeric \code{obsm} entries as reductions. Seurat replaces \code{_}
#'   and \code{|} in feature names with \code{-}; the original names are kept in the feature
#'   meta data column \code{feature_name} and used by \code{\link{SeuratToAnnData}} and
#'   \code{\link{Impute}}.
#' @examples
#' \dontrun{
#' seu <- AnnDataToSeurat(SeuratToAnnData(seurat_object))
#' }
#' @export
AnnDataToSeurat <- function(adata, assay = "RNA", counts = "X", data = NULL) {
  .need(c("SeuratObject", "Seurat"), "AnnDataToSeurat()")
  .check_string(counts, "counts")
  .seurat_from_parts(.anndata_parts(adata), assay = assay, counts = counts, data = data)
}

# AnnDataToSeurat() on the parts of an AnnData (pure R; spalstf.io.write_rds calls it too).
# `counts = NULL`: no counts, the matrix named by `data` fills the data slot alone.
.seurat_from_parts <- function(parts, assay = "RNA", counts = "X", data = NULL,
                               project = "SeuratProject") {
  .need(c("SeuratObject", "Seurat"), "AnnDataToSeurat()")
  .check_string(assay, "assay")
  .check_string(counts, "counts", null.ok = TRUE)
  .check_string(data, "data", null.ok = is.character(counts))
  obs <- .frame_from_enc(parts$obs)
  var <- .frame_from_enc(parts$var)
  cells <- rownames(obs)
  genes <- rownames(var)
  safe <- .seurat_safe_names(genes)
  layer_names <- names(parts$layers)
  get_mat <- function(name, arg, sparse = TRUE) {
    if (!identical(name, "X") && !name %in% layer_names) {
      stop(sprintf("`%s` must be \"X\" or one of the layers (%s), received: %s", arg,
                   paste(layer_names, collapse = ", "), name), call. = FALSE)
    }
    p <- if (identical(name, "X")) parts$x else parts$layers[[name]]
    m <- .matrix_from_parts(p, safe, cells)
    if (sparse && !methods::is(m, "dgCMatrix")) m <- methods::as(m, "CsparseMatrix")
    m
  }
  if (is.null(counts)) {
    a <- SeuratObject::CreateAssayObject(data = get_mat(data, "data", sparse = FALSE))
  } else {
    cmat <- get_mat(counts, "counts")
    if (is.null(data)) {
      data <- intersect(c("data", "logcounts"), layer_names)[1L]
    }
    a <- SeuratObject::CreateAssayObject(counts = cmat)
    if (!is.na(data)) {
      a <- SeuratObject::SetAssayData(a, slot = "data", new.data = get_mat(data, "data"))
    }
  }
  var[[.feature_name_col]] <- genes
  rownames(var) <- safe
  a@meta.features <- var
  SeuratObject::Key(a) <- .assay_key(assay)
  object <- SeuratObject::CreateSeuratObject(a, assay = assay, project = project,
                                             names.field = 1L, names.delim = "\001")
  md <- object@meta.data
  extra <- setdiff(colnames(md), colnames(obs))
  object@meta.data <- cbind(obs, md[cells, extra, drop = FALSE])
  if (is.factor(obs$orig.ident)) SeuratObject::Idents(object) <- obs$orig.ident
  # coordinates and reductions
  obsm <- parts$obsm
  if (!is.null(obsm$spatial)) {
    object <- .add_spatial(object, obsm$spatial, cells, assay, parts$uns$spatial,
                           parts$uns$seurat)
  }
  for (nm in setdiff(names(obsm), "spatial")) {
    emb <- as.matrix(obsm[[nm]])
    red <- sub("^X_", "", nm)
    key <- paste0(gsub("[^A-Za-z0-9]", "", red), "_")
    if (identical(key, "_")) key <- "DR_"
    colnames(emb) <- paste0(key, seq_len(ncol(emb)))
    rownames(emb) <- cells
    object[[red]] <- SeuratObject::CreateDimReducObject(embeddings = emb, key = key, assay = assay)
  }
  object
}

.add_spatial <- function(object, spatial, cells, assay, uns_spatial, seurat_uns) {
  spatial <- as.matrix(spatial)
  ok <- stats::complete.cases(spatial)
  images <- seurat_uns$images
  if (length(uns_spatial) && !is.null(names(uns_spatial))) {
    for (lib in names(uns_spatial)) {
      u <- uns_spatial[[lib]]
      if (is.null(u$images$lowres) || is.null(u$scalefactors)) next
      acells <- as.character(u$array_cells %||% cells[ok])
      idx <- match(acells, cells)
      arr <- if (!is.null(u$array)) as.matrix(u$array) else matrix(c(1L, NA, NA), length(idx), 3L, byrow = TRUE)
      crd <- data.frame(tissue = as.integer(arr[, 1]), row = as.integer(arr[, 2]),
                        col = as.integer(arr[, 3]), imagerow = spatial[idx, 2],
                        imagecol = spatial[idx, 1], row.names = acells)
      sf <- u$scalefactors
      img <- methods::new("VisiumV1",
        image = u$images$lowres,
        scale.factors = Seurat::scalefactors(spot = sf$spot_diameter_fullres,
                                             fiducial = sf$fiducial_diameter_fullres,
                                             hires = sf$tissue_hires_scalef,
                                             lowres = sf$tissue_lowres_scalef),
        coordinates = crd, spot.radius = as.numeric(u$spot_radius %||% 0),
        assay = assay, key = paste0(gsub("[^A-Za-z0-9]", "", lib), "_"))
      object[[lib]] <- img
      ok[idx] <- FALSE
    }
  }
  if (any(ok)) {
    fov_names <- names(images)[unlist(images) %in% "FOV"]
    name <- if (length(fov_names)) fov_names[1L] else "fov"
    df <- data.frame(x = spatial[ok, 1], y = spatial[ok, 2], cell = cells[ok])
    fov <- SeuratObject::CreateFOV(df, type = "centroids", assay = assay,
                                   key = paste0(gsub("[^A-Za-z0-9]", "", name), "_"))
    object[[name]] <- fov
  }
  object
}

# ------------------------------------------------------------------------------- SCE
#' Convert a SingleCellExperiment to AnnData (in memory)
#'
#' @param object A \code{SingleCellExperiment} (a \code{SpatialExperiment} works too).
#' @param X.name Assay that becomes \code{X} (default \code{"counts"} when present, otherwise
#'   the first assay); all other assays become layers of the same name.
#' @param coords Spatial coordinates when there is no reduced dimension named \code{"spatial"}
#'   (nor \code{spatialCoords()}): as for \code{\link{SeuratToAnnData}}, colData columns.
#' @return A Python \code{anndata.AnnData}: \code{obs} = colData, \code{var} = rowData,
#'   \code{obsm} = reducedDims (\code{obsm[["spatial"]]} = coordinates), \code{uns} = simple
#'   (atomic) metadata entries.
#' @examples
#' \dontrun{
#' adata <- SCEToAnnData(sce)
#' }
#' @export
SCEToAnnData <- function(object, X.name = NULL, coords = NULL) {
  .anndata_from_parts(.sce_parts(object, X.name = X.name, coords = coords))
}

# The parts of SCEToAnnData()'s AnnData (pure R; spalstf.io.read_rds calls it too).
.sce_parts <- function(object, X.name = NULL, coords = NULL) {
  .need(c("SingleCellExperiment", "SummarizedExperiment", "S4Vectors"), "SCEToAnnData()")
  if (!methods::is(object, "SingleCellExperiment")) {
    stop("`object` must be a SingleCellExperiment, received: ",
         paste(class(object), collapse = "/"), call. = FALSE)
  }
  an <- SummarizedExperiment::assayNames(object)
  if (!length(an)) stop("`object` has no assays.", call. = FALSE)
  if (any(!nzchar(an) | is.na(an))) stop("`object` has unnamed assays; name them first.", call. = FALSE)
  X.name <- X.name %||% (if ("counts" %in% an) "counts" else an[1L])
  .check_string(X.name, "X.name")
  if (!X.name %in% an) {
    stop(sprintf("`X.name` must be one of the assays (%s), received: %s",
                 paste(an, collapse = ", "), X.name), call. = FALSE)
  }
  cells <- colnames(object) %||% as.character(seq_len(ncol(object)))
  genes <- rownames(object) %||% as.character(seq_len(nrow(object)))
  layers <- list()
  for (nm in setdiff(an, X.name)) {
    layers[[nm]] <- .matrix_parts(SummarizedExperiment::assay(object, nm, withDimnames = FALSE))
  }
  obs <- as.data.frame(SummarizedExperiment::colData(object), optional = TRUE)
  var <- as.data.frame(SummarizedExperiment::rowData(object), optional = TRUE)
  obsm <- list()
  for (rd in SingleCellExperiment::reducedDimNames(object)) {
    m <- as.matrix(SingleCellExperiment::reducedDim(object, rd))
    storage.mode(m) <- "double"
    obsm[[rd]] <- unname(m)
  }
  if (is.null(obsm$spatial) && requireNamespace("SpatialExperiment", quietly = TRUE) &&
      methods::is(object, "SpatialExperiment")) {
    obsm$spatial <- unname(as.matrix(SpatialExperiment::spatialCoords(object)))
  }
  if (is.null(obsm$spatial)) {
    m <- .meta_coords(obs, coords)
    if (!is.null(m)) obsm$spatial <- unname(m)
  }
  md <- S4Vectors::metadata(object)
  uns <- list()
  for (nm in names(md)) {
    v <- md[[nm]]
    if (nzchar(nm) && is.atomic(v) && is.null(dim(v))) uns[[nm]] <- v
  }
  uns$sce <- list(X_name = X.name)
  list(x = .matrix_parts(SummarizedExperiment::assay(object, X.name, withDimnames = FALSE)),
       obs = .frame_parts(obs, cells), var = .frame_parts(var, genes), layers = layers,
       obsm = obsm, uns = uns)
}

#' Convert AnnData to a SingleCellExperiment (in memory)
#'
#' @param adata A Python \code{anndata.AnnData} (cells x genes).
#' @param X.name Name of the assay that receives \code{X} (default: the name recorded by
#'   \code{\link{SCEToAnnData}}, otherwise \code{"counts"}).
#' @return A \code{SingleCellExperiment} (genes x cells): assays from \code{X} and the layers,
#'   colData = \code{obs}, rowData = \code{var}, reducedDims = numeric \code{obsm} entries
#'   (coordinates in \code{reducedDim(sce, "spatial")}).
#' @examples
#' \dontrun{
#' sce <- AnnDataToSCE(SCEToAnnData(sce))
#' }
#' @export
AnnDataToSCE <- function(adata, X.name = NULL) {
  .need(c("SingleCellExperiment", "SummarizedExperiment", "S4Vectors"), "AnnDataToSCE()")
  .check_string(X.name, "X.name", null.ok = TRUE)
  parts <- .anndata_parts(adata)
  obs <- .frame_from_enc(parts$obs)
  var <- .frame_from_enc(parts$var)
  cells <- rownames(obs)
  genes <- rownames(var)
  if (is.null(X.name)) {
    X.name <- if (!is.null(parts$uns$sce$X_name)) as.character(parts$uns$sce$X_name) else "counts"
  }
  assays <- list()
  assays[[X.name]] <- .matrix_from_parts(parts$x, genes, cells)
  for (nm in names(parts$layers)) {
    assays[[nm]] <- .matrix_from_parts(parts$layers[[nm]], genes, cells)
  }
  obsm <- parts$obsm
  rd <- lapply(obsm, function(m) {
    m <- as.matrix(m)
    rownames(m) <- cells
    m
  })
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = assays,
    colData = S4Vectors::DataFrame(obs, check.names = FALSE),
    rowData = S4Vectors::DataFrame(var, check.names = FALSE),
    reducedDims = rd
  )
  sce
}

`%||%` <- function(a, b) if (is.null(a)) b else a
