# Quick start in R with Bioconductor's SingleCellExperiment: impute the genes a Visium data set
# lacks, then check the method on the genes it measures (leave-genes-out cross-validation).
#
#   Rscript examples/sce_quickstart.R [DATA_DIR] [--fast] [--out=DIR]
#
# DATA_DIR holds SpatialRNA/ and Reference/ CSV folders of the RCTD layout (default
# ../shared/data/visium_brain: Visium mouse hippocampus, 313 spots x 276 genes; DropViz
# reference 510 cells x 307 genes, 17 cell types; 124 genes shared). --fast: a small network
# trained briefly, two folds of 20 genes (a smoke run, not for results); without it spalstf uses
# its defaults (training: 300 updates, plus the self-check's shorter fits) and the
# cross-validation trains it five more times, for 150 updates each. Writes a PNG of the map of an imputed gene and its uncertainty to --out
# (default sce_out/).
# Python: the one in SPALSTF_PYTHON, else .venv/bin/python of the working directory when it
# exists, else the one reticulate finds (SpaLSTF::install_spalstf() makes one).

args <- commandArgs(trailingOnly = TRUE)
fast <- "--fast" %in% args
out <- sub("^--out=", "", grep("^--out=", args, value = TRUE))
out <- if (length(out)) out[1] else "sce_out"
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
#    alternative experiment "SpaLSTF" (assays logcounts, counts: the same values as counts at
#    each spot's depth, std, and lower / upper: the 90% interval the self-check calibrated on
#    the ST's own genes); the object's own counts are untouched.
# --fast: a small network trained briefly; other spalstf options go by their Python names.
small <- list(d_model = 32L, depth = 1L, lstm_hidden = 16L, n_neighbors = 4L)
settings <- if (fast) c(list(epochs = 3L, n.steps = 3L, n.samples = 2L, verbose = FALSE), small) else list()
st <- do.call(Impute, c(list(st, ref, genes = NULL, seed = 0L), settings))
alt <- altExp(st, "SpaLSTF")
print(alt)
print(round(as.matrix(assay(alt, "logcounts")[1:4, 1:4]), 2))  # log-normalised imputations
print(round(as.matrix(assay(alt, "std")[1:4, 1:4]), 2))        # their uncertainty
print(round(as.matrix(assay(alt, "upper")[1:4, 1:4]), 2))      # upper bound of the interval
cat("parameters in metadata(st)$SpaLSTF; spalstf", metadata(st)$SpaLSTF$spalstf.version, "\n")
print(round(metadata(st)$SpaLSTF$self_check$weights, 2))  # the base predictions' weights

# The alternative experiment has the spots as columns: st[, spots] subsets the values and
# their uncertainty with them. A map of the most variable imputed gene and of its uncertainty,
# from the coordinates in reducedDim(st, "spatial"), each with its own colour scale (ggplot2).
values <- assay(alt, "logcounts")
gene <- rownames(values)[which.max(apply(values, 1, var))]
xy <- reducedDim(st, "spatial")
spots <- data.frame(x = xy[, 1], y = xy[, 2], imputed = values[gene, ],
                    std = assay(alt, "std")[gene, ])
map <- function(column, title) {
  ggplot2::ggplot(spots, ggplot2::aes(x, y, colour = .data[[column]])) +
    ggplot2::geom_point(size = 1.6) + ggplot2::scale_y_reverse() + ggplot2::coord_fixed() +
    ggplot2::scale_colour_viridis_c(option = if (column == "std") "magma" else "viridis") +
    ggplot2::labs(title = title, colour = NULL) + ggplot2::theme_void()
}
dir.create(out, showWarnings = FALSE, recursive = TRUE)
png_file <- file.path(out, "sce_quickstart.png")
png(png_file, width = 1000, height = 450, res = 100)
grid::grid.newpage()
grid::pushViewport(grid::viewport(layout = grid::grid.layout(1, 2)))
print(map("imputed", paste(gene, "imputed (log-normalised)")),
      vp = grid::viewport(layout.pos.row = 1, layout.pos.col = 1))
print(map("std", paste(gene, "uncertainty (std: interval half-width / z)")),
      vp = grid::viewport(layout.pos.row = 1, layout.pos.col = 2))
invisible(dev.off())
cat("wrote", png_file, "\n")

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
