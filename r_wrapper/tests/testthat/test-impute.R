# Impute(), FitSpaLSTF(), predict(), SaveSpaLSTF() / LoadSpaLSTF() on tiny data.

test_that("Impute on Seurat adds an assay, keeps names and leaves the rest alone", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  d <- tiny_counts()
  objs <- tiny_seurat(d)
  st <- objs$st
  before <- st
  genes <- c("GENE_U1", "G17", "G18")
  out <- do.call(Impute, c(list(st, objs$ref, genes = genes), FAST))
  expect_identical(st, before)
  expect_identical(SeuratObject::DefaultAssay(out), "Spatial")
  expect_identical(SeuratObject::GetAssayData(out, assay = "Spatial", slot = "counts"),
                   SeuratObject::GetAssayData(st, assay = "Spatial", slot = "counts"))
  a <- out[["SpaLSTF"]]
  vals <- SeuratObject::GetAssayData(a, slot = "data")
  expect_identical(rownames(vals), c("GENE-U1", "G17", "G18"))
  expect_identical(a@meta.features$feature_name, genes)
  expect_identical(colnames(vals), colnames(st))
  expect_true(all(is.finite(as.matrix(vals))) && all(as.matrix(vals) >= 0))
  std <- SeuratObject::Misc(a, "std")
  expect_identical(dimnames(std), dimnames(vals))
  expect_true(all(std >= 0))
  tool <- SeuratObject::Tool(out, "Impute")
  expect_identical(tool$genes, genes)
  expect_identical(tool$seed, 0L)
  expect_identical(tool$n_samples, 2L)
  expect_true(any(grepl("Impute", names(out@commands))))
  # same seed, same values; and set.default
  again <- do.call(Impute, c(list(st, objs$ref, genes = genes, set.default = TRUE), FAST))
  expect_identical(SeuratObject::GetAssayData(again, assay = "SpaLSTF", slot = "data"), vals)
  expect_identical(SeuratObject::DefaultAssay(again), "SpaLSTF")
})

test_that("Impute on matrices and SingleCellExperiment gives the Seurat values", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  skip_if_no_sce()
  d <- tiny_counts()
  objs <- tiny_seurat(d)
  genes <- c("G17", "GENE_U1")
  seu <- do.call(Impute, c(list(objs$st, objs$ref, genes = genes), FAST))
  ref_vals <- as.matrix(SeuratObject::GetAssayData(seu, assay = "SpaLSTF", slot = "data"))
  # The Seurat object has coordinates (meta data x, y), so the others get the same ones.
  m <- do.call(Impute, c(list(d$st, d$ref, genes = genes, spatial = d$coords), FAST))
  expect_identical(rownames(m), genes)
  expect_identical(colnames(m), colnames(d$st))
  expect_equal(unname(m[, , drop = FALSE]), unname(ref_vals), tolerance = 1e-6)
  expect_identical(dim(attr(m, "std")), dim(m))
  # sparse input, same values
  ms <- do.call(Impute, c(list(Matrix::Matrix(d$st, sparse = TRUE), d$ref, genes = genes,
                               spatial = d$coords), FAST))
  expect_equal(unname(ms[, ]), unname(m[, ]), tolerance = 1e-6)
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = d$st))
  sce$x <- d$coords[, "x"]
  sce$y <- d$coords[, "y"]
  ref_sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = d$ref))
  out <- do.call(Impute, c(list(sce, ref_sce, genes = genes), FAST))
  alt <- SingleCellExperiment::altExp(out, "SpaLSTF")
  expect_identical(rownames(alt), genes)
  expect_identical(colnames(alt), colnames(sce))
  expect_equal(unname(SummarizedExperiment::assay(alt, "logcounts")), unname(m[, , drop = FALSE]),
               tolerance = 1e-6)
  expect_identical(S4Vectors::metadata(out)$SpaLSTF$genes, genes)
  expect_identical(SummarizedExperiment::assay(out, "counts"), d$st)
})

test_that("Impute checks its arguments and reports Python errors as R errors", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  d <- tiny_counts()
  objs <- tiny_seurat(d)
  expect_error(Impute(objs$st, objs$ref, genes = "G17", n.samples = 0), "`n.samples` must be")
  expect_error(Impute(objs$st, objs$ref, genes = "G17", seed = 1.5), "`seed` must be")
  expect_error(Impute(objs$st, objs$ref, genes = c("G17", "G17")), "duplicated")
  expect_error(Impute(objs$st, objs$ref, genes = "NOT_A_GENE", verbose = FALSE),
               "None of `genes` is in the reference")
  expect_error(Impute(objs$st, list(), genes = "G17"), "`reference` must be")
  expect_error(Impute("x", objs$ref), "`object` must be")
  # A Python error keeps Python's message and type.
  expect_error(Impute(objs$st, objs$ref, genes = "G17", verbose = FALSE, batch_size = "x"),
               class = "spalstf_python_error")
  err <- tryCatch(LoadSpaLSTF(file.path(tempdir(), "no_such_model")), error = identity)
  expect_s3_class(err, "ValueError")
  expect_match(conditionMessage(err), "is not a spalstf model folder")
})

test_that("FitSpaLSTF, predict, SaveSpaLSTF and LoadSpaLSTF agree", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  d <- tiny_counts()
  objs <- tiny_seurat(d)
  model <- FitSpaLSTF(objs$ref, known.genes = d$known, target.genes = d$targets,
                      epochs = 1L, verbose = FALSE)
  expect_s3_class(model, "SpaLSTFModel")
  expect_identical(model$target.genes, c("G17", "G18", "GENE-U1"))
  expect_output(print(model), "16 known genes -> 3 target genes")
  p <- predict(model, objs$st, n.steps = 2L, n.samples = 2L, verbose = FALSE)
  expect_identical(colnames(p), colnames(objs$st))
  expect_identical(dim(p), c(3L, ncol(objs$st)))
  path <- file.path(tempdir(), "spalstf_model_test")
  unlink(path, recursive = TRUE)
  SaveSpaLSTF(model, path)
  expect_error(SaveSpaLSTF(model, path), class = "spalstf_python_error")
  loaded <- LoadSpaLSTF(path, device = "cpu")
  expect_identical(loaded$known.genes, model$known.genes)
  p2 <- predict(loaded, d$st, n.steps = 2L, n.samples = 2L, verbose = FALSE)
  expect_equal(unname(p2[, ]), unname(p[, ]), tolerance = 1e-6)
  # a model as the reference of Impute
  out <- Impute(objs$st, model, n.steps = 2L, n.samples = 2L, verbose = FALSE)
  expect_equal(unname(as.matrix(SeuratObject::GetAssayData(out, assay = "SpaLSTF"))),
               unname(p[, ]), tolerance = 1e-6)
  unlink(path, recursive = TRUE)
})

test_that("the package version equals the Python package's", {
  skip_if_no_spalstf()
  expect_identical(as.character(utils::packageVersion("SpaLSTF")),
                   SpaLSTF:::.spalstf_py_version())
})
