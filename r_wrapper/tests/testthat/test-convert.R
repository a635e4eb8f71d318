# Round trips Seurat -> AnnData -> Seurat and SCE -> AnnData -> SCE.

make_meta <- function(cells) {
  n <- length(cells)
  data.frame(
    group = factor(rep(c("b", "a", NA), length.out = n), levels = c("b", "a")),
    score = c(NA, seq_len(n - 1L) / 3),
    count = c(seq_len(n - 1L), NA_integer_),
    flag = rep(c(TRUE, FALSE, NA), length.out = n),
    label = c("x y", NA, rep("z_1", n - 2L)),
    row.names = cells, stringsAsFactors = FALSE
  )
}

test_that("Seurat -> AnnData -> Seurat keeps counts, names, meta data and FOV coordinates", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  d <- tiny_counts()
  counts <- Matrix::Matrix(d$ref[, 1:12], sparse = TRUE)
  obj <- suppressWarnings(SeuratObject::CreateSeuratObject(counts, assay = "Spatial"))
  obj <- SeuratObject::AddMetaData(obj, make_meta(colnames(obj)))
  fov <- SeuratObject::CreateFOV(
    data.frame(x = seq_len(12) * 1.5, y = rev(seq_len(12)) + 0.25, cell = colnames(obj)),
    type = "centroids", assay = "Spatial", key = "fov_")
  obj[["fov"]] <- fov
  before <- obj

  ad <- SeuratToAnnData(obj)
  expect_identical(obj, before)  # input untouched
  expect_identical(reticulate::py_to_r(ad$n_obs), 12L)
  expect_identical(as.character(reticulate::py_to_r(ad$obs_names$tolist())), colnames(obj))
  sp <- reticulate::py_to_r(ad$obsm$`__getitem__`("spatial"))
  expect_equal(sp[, 1], seq_len(12) * 1.5)

  back <- AnnDataToSeurat(ad, assay = "Spatial")
  expect_identical(SeuratObject::GetAssayData(back, slot = "counts"),
                   SeuratObject::GetAssayData(obj, slot = "counts"))
  expect_identical(colnames(back), colnames(obj))
  expect_identical(rownames(back), rownames(obj))
  expect_identical(back@meta.data, obj@meta.data)
  expect_equal(SeuratObject::GetTissueCoordinates(back[["fov"]]),
               SeuratObject::GetTissueCoordinates(obj[["fov"]]))
})

test_that("feature names with underscores survive AnnData -> Seurat -> AnnData", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  d <- tiny_counts()
  sce_like <- d$ref[, 1:5]
  ad <- SpaLSTF:::.matrix_to_anndata(sce_like, "x")
  seu <- AnnDataToSeurat(ad)
  expect_true("GENE-U1" %in% rownames(seu))
  expect_identical(seu[["RNA"]]@meta.features$feature_name, rownames(sce_like))
  ad2 <- SeuratToAnnData(seu)
  expect_identical(as.character(reticulate::py_to_r(ad2$var_names$tolist())), rownames(sce_like))
  expect_identical(SeuratObject::GetAssayData(seu, slot = "counts")["GENE-U1", ],
                   stats::setNames(as.numeric(sce_like["GENE_U1", ]), colnames(sce_like)))
})

test_that("Visium images come back as VisiumV1 with coordinates and scale factors", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  d <- tiny_counts()
  obj <- suppressWarnings(SeuratObject::CreateSeuratObject(
    Matrix::Matrix(d$ref[, 1:6], sparse = TRUE), assay = "Spatial"))
  crd <- data.frame(tissue = rep(1L, 6), row = 1:6, col = 6:1,
                    imagerow = c(10, 20, 30, 40, 50, 60), imagecol = c(5, 15, 25, 35, 45, 55),
                    row.names = colnames(obj))
  img <- methods::new("VisiumV1", image = array(0.5, c(4, 5, 3)),
                      scale.factors = Seurat::scalefactors(spot = 90, fiducial = 140,
                                                           hires = 0.2, lowres = 0.05),
                      coordinates = crd, spot.radius = 0.01, assay = "Spatial", key = "slice1_")
  obj[["slice1"]] <- img
  ad <- SeuratToAnnData(obj)
  sp <- reticulate::py_to_r(ad$obsm$`__getitem__`("spatial"))
  expect_equal(unname(sp), unname(cbind(crd$imagecol, crd$imagerow)))
  back <- AnnDataToSeurat(ad, assay = "Spatial")
  expect_s4_class(back[["slice1"]], "VisiumV1")
  expect_equal(back[["slice1"]]@coordinates, crd)
  expect_equal(back[["slice1"]]@scale.factors$lowres, 0.05)
  expect_equal(dim(back[["slice1"]]@image), c(4L, 5L, 3L))
})

test_that("SCE -> AnnData -> SCE keeps assays, names, colData, rowData and coordinates", {
  skip_if_no_spalstf()
  skip_if_no_sce()
  d <- tiny_counts()
  counts <- d$ref[, 1:10]
  logc <- log1p(counts)
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = Matrix::Matrix(counts, sparse = TRUE), logcounts = logc),
    colData = S4Vectors::DataFrame(make_meta(colnames(counts)), check.names = FALSE),
    rowData = S4Vectors::DataFrame(symbol = tolower(rownames(counts)),
                                   row.names = rownames(counts)))
  SingleCellExperiment::reducedDim(sce, "spatial") <- cbind(x = 1:10 + 0.5, y = 10:1 * 2)
  before <- sce
  ad <- SCEToAnnData(sce)
  expect_identical(sce, before)
  expect_identical(as.character(reticulate::py_to_r(ad$var_names$tolist())), rownames(counts))
  back <- AnnDataToSCE(ad)
  expect_identical(SummarizedExperiment::assayNames(back), c("counts", "logcounts"))
  expect_identical(SummarizedExperiment::assay(back, "counts"),
                   SummarizedExperiment::assay(sce, "counts"))
  expect_equal(SummarizedExperiment::assay(back, "logcounts"), logc)
  expect_identical(colnames(back), colnames(sce))
  expect_identical(rownames(back), rownames(sce))
  expect_identical(as.data.frame(SummarizedExperiment::colData(back)),
                   as.data.frame(SummarizedExperiment::colData(sce)))
  expect_identical(SummarizedExperiment::rowData(back)$symbol, tolower(rownames(counts)))
  expect_equal(unname(SingleCellExperiment::reducedDim(back, "spatial")),
               unname(SingleCellExperiment::reducedDim(sce, "spatial")))
})

test_that("converters reject wrong inputs with the argument's name", {
  skip_if_no_seurat()
  skip_if_no_sce()
  expect_error(SeuratToAnnData(matrix(1)), "`object` must be a Seurat object")
  expect_error(SCEToAnnData(list()), "`object` must be a SingleCellExperiment")
  expect_error(AnnDataToSeurat(list()), "`adata` must be an AnnData")
  expect_error(AnnDataToSCE(1), "`adata` must be an AnnData")
})

test_that("the visium_lymph Seurat fixtures round-trip through AnnData", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  dir <- skip_if_no_data("visium_lymph")
  st <- readRDS(file.path(dir, "seurat", "st_seurat.rds"))
  ad <- SeuratToAnnData(st)
  back <- AnnDataToSeurat(ad, assay = "Spatial")
  expect_identical(SeuratObject::GetAssayData(back, slot = "counts"),
                   SeuratObject::GetAssayData(st, slot = "counts"))
  expect_identical(back@meta.data, st@meta.data)
  expect_equal(SeuratObject::GetTissueCoordinates(back), SeuratObject::GetTissueCoordinates(st))
})
