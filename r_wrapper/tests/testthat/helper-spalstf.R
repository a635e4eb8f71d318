# Skip helpers: the suite passes (with skips) where Python, spalstf or the data are missing.
skip_if_no_spalstf <- function() {
  skip_if_not(SpaLSTF::spalstf_available(), "no Python with the spalstf module")
}

skip_if_no_seurat <- function() {
  skip_if_not_installed("SeuratObject")
  skip_if_not_installed("Seurat")
}

skip_if_no_sce <- function() {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("SummarizedExperiment")
  skip_if_not_installed("S4Vectors")
}

# The shared data folder: $SPALSTF_DATA, else ../shared/data beside a parent folder.
spalstf_data_dir <- function() {
  env <- Sys.getenv("SPALSTF_DATA", "")
  if (nzchar(env) && dir.exists(env)) return(normalizePath(env))
  d <- normalizePath(getwd())
  repeat {
    cand <- file.path(dirname(d), "shared", "data")
    if (dir.exists(file.path(cand, "visium_lymph"))) return(cand)
    if (dirname(d) == d) return(NULL)
    d <- dirname(d)
  }
}

skip_if_no_data <- function(name) {
  d <- spalstf_data_dir()
  skip_if(is.null(d) || !dir.exists(file.path(d, name)), paste("data set", name, "absent"))
  file.path(d, name)
}

# Tiny paired data: a reference (genes x cells) and a spatial set measuring a subset of genes.
# Gene "GENE_U1" carries an underscore on purpose (Seurat writes it "GENE-U1").
tiny_counts <- function(n_genes = 24L, n_ref = 60L, n_st = 30L, seed = 1L) {
  set.seed(seed)
  genes <- c(sprintf("G%02d", seq_len(n_genes - 1L)), "GENE_U1")
  types <- rep(c(1, 3), length.out = n_ref)
  ref <- matrix(stats::rpois(n_genes * n_ref, lambda = rep(types, each = n_genes) *
                               rep(seq(0.5, 3, length.out = n_genes), n_ref)),
                n_genes, n_ref, dimnames = list(genes, sprintf("ref_%03d", seq_len(n_ref))))
  st <- matrix(stats::rpois(n_genes * n_st, lambda = 2), n_genes, n_st,
               dimnames = list(genes, sprintf("spot_%02d-1", seq_len(n_st))))
  known <- genes[1:16]
  list(ref = ref, st = st[known, ], known = known, targets = c("G17", "G18", "GENE_U1"),
       coords = cbind(x = stats::runif(n_st) * 100, y = stats::runif(n_st) * 100))
}

tiny_seurat <- function(d = tiny_counts()) {
  st <- SeuratObject::CreateSeuratObject(Matrix::Matrix(d$st, sparse = TRUE),
                                         assay = "Spatial", project = "tiny_st")
  st$x <- d$coords[, "x"]
  st$y <- d$coords[, "y"]
  ref <- suppressWarnings(SeuratObject::CreateSeuratObject(
    Matrix::Matrix(d$ref, sparse = TRUE), project = "tiny_ref"))
  ref$cell_type <- rep(c("A", "B"), length.out = ncol(ref))
  list(st = st, ref = ref)
}

# Options that keep every model run to a second or two; every base predictor, the network
# too (not a default one), so that the diffusion is exercised from R; not the masked network
# (it trains on the ST at every imputation). The names are the Python package's
# (spalstf.config.PREDICTOR_NAMES), asked for on first use only: a suite without Python
# still runs (its tests skip).
delayedAssign("ALL_PREDICTORS", {
  SpaLSTF:::.spalstf_module()
  setdiff(unlist(reticulate::import("spalstf.config")$PREDICTOR_NAMES), "masked")
})
delayedAssign("FAST", list(epochs = 1L, n.steps = 2L, n.samples = 2L, verbose = FALSE,
                           predictors = ALL_PREDICTORS))

# The counts slot the learnt combination's imputations `values` (genes x cells) get at each
# cell's `depth`: Python's expected counts, the Poisson means whose expected measurement they are
expected_counts <- function(values, depth) {
  pre <- reticulate::import("spalstf.preprocess")
  t(pre$expected_count_at_depth(t(as.matrix(values)), as.numeric(depth)))
}
