# Quick start in R with Seurat: impute genes a Visium panel lacks, from a scRNA-seq reference.
#
#   Rscript examples/seurat_quickstart.R [DATA_DIR] [--fast] [--out=DIR]
#
# DATA_DIR holds st_seurat.rds and sc_seurat.rds (default ../shared/data/visium_lymph/seurat:
# Visium human lymph node, 1000 spots x 2000 genes; reference 330 cells x 10237 genes, 11 cell
# types). --fast: 200 spots and a short training of a small network (a smoke run, not for
# results); without it spalstf uses its defaults (training: up to 2 min). Writes a PNG of the
# maps to --out (default seurat_out/).
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
print(st)  # a new assay "SpaLSTF"; the default assay is still "Spatial"

imputed <- GetAssayData(st, assay = "SpaLSTF", slot = "data")  # log-normalised, genes x spots
std <- SeuratObject::Misc(st[["SpaLSTF"]], "std")              # uncertainty, same shape
print(round(as.matrix(imputed[, 1:4]), 2))
cat("spalstf", Tool(st, "Impute")$spalstf.version, "- parameters in Tool(st, \"Impute\")\n")

# The imputed genes are an assay like any other: Seurat's plots and functions read them.
# Here base graphics, from the coordinates in the meta data columns x and y.
dir.create(out, showWarnings = FALSE, recursive = TRUE)
png_file <- file.path(out, "seurat_quickstart.png")
png(png_file, width = 1500, height = 600, res = 110)
par(mfrow = c(2, length(genes)), mar = c(1, 1, 2, 1))
palettes <- list(imputed = grDevices::hcl.colors(50, "Viridis"),
                 std = grDevices::hcl.colors(50, "Inferno"))
colours <- function(v, pal) {  # one colour of `pal` per value, from min(v) to max(v)
  breaks <- seq(min(v), max(v) + 1e-9, length.out = length(pal) + 1L)
  pal[findInterval(v, breaks, all.inside = TRUE)]
}
for (what in c("imputed", "std")) {
  values <- if (what == "imputed") as.matrix(imputed) else std
  for (g in genes) {
    v <- values[g, ]
    col <- colours(v, palettes[[what]])
    plot(st$x, -st$y, col = col, pch = 16, cex = 0.9, axes = FALSE, asp = 1,
         main = paste0(g, ": ", what), xlab = "", ylab = "")
  }
}
invisible(dev.off())
cat("wrote", png_file, "\n")
