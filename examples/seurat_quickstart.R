# Quick start in R with Seurat: impute genes a Visium panel lacks, from a scRNA-seq reference.
#
#   Rscript examples/seurat_quickstart.R [DATA_DIR] [--fast] [--out=DIR]
#
# DATA_DIR holds st_seurat.rds and sc_seurat.rds (default ../shared/data/visium_lymph/seurat:
# Visium human lymph node, 1000 spots x 2000 genes; reference 330 cells x 10237 genes, 11 cell
# types). --fast: 200 spots and a short training of a small network (a smoke run, not for
# results); without it spalstf uses its defaults (training: 300 updates, plus the self-check's
# shorter fits). Writes a PNG of the maps of the imputed genes and their uncertainty to --out
# (default seurat_out/).
# Python: the one in SPALSTF_PYTHON, else .venv/bin/python of the working directory when it
# exists, else the one reticulate finds (SpaLSTF::install_spalstf() makes one).

args <- commandArgs(trailingOnly = TRUE)
fast <- "--fast" %in% args
out <- sub("^--out=", "", grep("^--out=", args, value = TRUE))
out <- if (length(out)) out[1] else "seurat_out"
data_dir <- args[!startsWith(args, "--")]
data_dir <- if (length(data_dir)) data_dir[1] else "../shared/data/visium_lymph/seurat"
if (!dir.exists(data_dir)) stop("no folder ", data_dir, ": pass the folder of st_seurat.rds")
if (!nzchar(Sys.getenv("SPALSTF_PYTHON")) && file.exists(".venv/bin/python")) {
  Sys.setenv(SPALSTF_PYTHON = normalizePath(".venv/bin/python"))
}

suppressPackageStartupMessages({
  library(Seurat)
  library(SpaLSTF)
})
cat("Python used:", spalstf_python(), "\n")

st <- readRDS(file.path(data_dir, "st_seurat.rds"))  # spatial: counts in assay "Spatial"
sc <- readRDS(file.path(data_dir, "sc_seurat.rds"))  # reference: counts in assay "RNA"
if (fast) st <- st[, 1:200]
# Markers of T cells (CD3E, CCR7), B cells (MS4A1, CR2) and the T-cell zone (CCL19); the
# Visium panel measures none of them, the reference measures all.
genes <- c("CD3E", "CCR7", "MS4A1", "CR2", "CCL19")
measured <- intersect(genes, rownames(st))
cat("of these, the Visium panel measures:", if (length(measured)) measured else "none", "\n")

# --fast: a small network trained briefly; other spalstf options go by their Python names.
small <- list(d_model = 32L, depth = 1L, lstm_hidden = 16L, n_neighbors = 4L)
settings <- if (fast) c(list(epochs = 3L, n.steps = 3L, n.samples = 2L, verbose = FALSE), small) else list()
st <- do.call(Impute, c(list(st, sc, genes = genes, seed = 0L), settings))
# new assays "SpaLSTF" (values), "SpaLSTF.std" (uncertainty), "SpaLSTF.lower" and
# "SpaLSTF.upper" (the 90% interval); the default assay is still "Spatial"
print(st)

imputed <- GetAssayData(st, assay = "SpaLSTF", slot = "data")  # log-normalised, genes x spots
std <- GetAssayData(st, assay = "SpaLSTF.std", slot = "data")  # uncertainty, same genes and spots
print(round(as.matrix(imputed[, 1:4]), 2))
print(round(as.matrix(std[, 1:4]), 2))
cat("spalstf", Tool(st, "Impute")$spalstf.version, "- parameters in Tool(st, \"Impute\")\n")
print(round(Tool(st, "Impute")$self_check$weights, 2))  # the base predictions' weights

# The imputations and their uncertainty are assays like any other: subset() and merge() keep
# them aligned with the spots, and Seurat's functions and plots read them by the assays' keys,
# "spalstf_" and "spalstfstd_". These spots come with a field of view (their centroids), so
# ImageFeaturePlot() maps them; for an object with a Visium image, SpatialFeaturePlot().
# Each panel has its own colour scale.
dir.create(out, showWarnings = FALSE, recursive = TRUE)
png_file <- file.path(out, "seurat_quickstart.png")
p <- ImageFeaturePlot(st, features = c(paste0("spalstf_", genes), paste0("spalstfstd_", genes)),
                      size = if (fast) 2.5 else 1.2, dark.background = FALSE,
                      cols = c("lightgrey", "darkred")) +
  patchwork::plot_layout(ncol = length(genes)) +
  patchwork::plot_annotation(
    title = "Imputed expression (top, log-normalised) and its uncertainty (bottom, std)",
    subtitle = "Genes the Visium panel did not measure, predicted from the scRNA-seq reference")
ggplot2::ggsave(png_file, p, width = 3.2 * length(genes), height = 5.5, dpi = 100, bg = "white")
cat("wrote", png_file, "\n")
