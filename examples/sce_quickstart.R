# Quick start in R with Bioconductor's SingleCellExperiment: impute the genes a Visium data set
# lacks, then check the method on the genes it measures (leave-genes-out cross-validation).
#
#   Rscript examples/sce_quickstart.R [DATA_DIR] [--fast]
#
# DATA_DIR holds SpatialRNA/ and Reference/ CSV folders of the RCTD layout (default
# ../shared/data/visium_brain: Visium mouse hippocampus, 313 spots x 276 genes; DropViz
# reference 510 cells x 307 genes, 17 cell types; 124 genes shared). --fast: a small network
# trained briefly, two folds of 20 genes (a smoke run, not for results); without it spalstf uses
# its defaults (training: up to 2 min) and the cross-validation trains it five more times, for
# up to 30 s each.
# Python: the one in SPALSTF_PYTHON, else .venv/bin/python of the working directory when it
# exists, else the one reticulate finds (SpaLSTF::install_spalstf() makes one).

args <- commandArgs(trailingOnly = TRUE)
fast <- "--fast" %in% args
data_dir <- args[!startsWith(args, "--")]
data_dir <- if (length(data_dir)) data_dir[1] else "../shared/data/visium_brain"
if (!dir.exists(data_dir)) stop("no folder ", data_dir, ": pass the folder of SpatialRNA/")
if (!nzchar(Sys.getenv("SPALSTF_PYTHON")) && file.exists(".venv/bin/python")) {
  Sys.setenv(SPALSTF_PYTHON = normalizePath(".venv/bin/python"))
}

suppressPackageStartupMessages({
  library(SingleCellExperiment)
  library(SpaLSTF)
})

# Build the two SingleCellExperiments from plain CSV files (genes x cells counts).
read_counts <- function(folder) {
  m <- as.matrix(read.csv(file.path(data_dir, folder, "counts.csv"), row.names = 1,
                          check.names = FALSE))
  Matrix::Matrix(m, sparse = TRUE)
}
st_counts <- read_counts("SpatialRNA")
coords <- read.csv(file.path(data_dir, "SpatialRNA", "coords.csv"), row.names = 1)
st <- SingleCellExperiment(assays = list(counts = st_counts),
                           reducedDims = list(spatial = as.matrix(coords[colnames(st_counts), ])))
ref_counts <- read_counts("Reference")
types <- read.csv(file.path(data_dir, "Reference", "cell_types.csv"), row.names = 1)
ref <- SingleCellExperiment(assays = list(counts = ref_counts),
                            colData = S4Vectors::DataFrame(cell_type = types[colnames(ref_counts), 1]))
cat(sprintf("ST: %d genes x %d spots; reference: %d genes x %d cells; %d genes shared\n",
            nrow(st), ncol(st), nrow(ref), ncol(ref), length(intersect(rownames(st), rownames(ref)))))

# 1. Impute: genes = NULL imputes every reference gene the ST lacks. The result is an
#    alternative experiment "SpaLSTF" (assays logcounts and std); the counts are untouched.
# --fast: a small network trained briefly; other spalstf options go by their Python names.
small <- list(d_model = 32L, depth = 1L, lstm_hidden = 16L, n_neighbors = 4L)
settings <- if (fast) c(list(epochs = 3L, n.steps = 3L, n.samples = 2L, verbose = FALSE), small) else list()
st <- do.call(Impute, c(list(st, ref, genes = NULL, seed = 0L), settings))
alt <- altExp(st, "SpaLSTF")
print(alt)
print(round(as.matrix(assay(alt, "logcounts")[1:4, 1:4]), 2))  # log-normalised imputations
print(round(as.matrix(assay(alt, "std")[1:4, 1:4]), 2))        # their uncertainty
cat("parameters in metadata(st)$SpaLSTF; spalstf", metadata(st)$SpaLSTF$spalstf.version, "\n")

# 2. How good is it here? Hide folds of the measured genes, predict them, score per gene.
#    spalstf trains once per fold; here each training is capped at 150 updates (max_steps).
spalstf_opts <- if (fast) c(list(epochs = 3L, n_steps = 3L, n_samples = 2L), small) else list(max_steps = 150L)
shared <- intersect(rownames(st), rownames(ref))
cv <- CrossValidate(counts(st), counts(ref), n.folds = if (fast) 2L else 5L,
                    methods = c("knn", "spage", "spalstf"),
                    genes = if (fast) shared[1:20] else NULL,
                    method.options = list(spalstf = spalstf_opts))
per_gene <- cv[cv$truth == "lognorm", ]
print(aggregate(cbind(pcc, ssim, rmse) ~ method, data = per_gene, FUN = median))
