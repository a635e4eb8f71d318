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
  # the counts slot: the same values at each cell's depth, its total over the known genes
  counts <- as.matrix(SeuratObject::GetAssayData(a, slot = "counts"))
  expect_identical(dimnames(counts), dimnames(vals))
  known <- setdiff(rownames(st), genes)
  depth <- Matrix::colSums(SeuratObject::GetAssayData(st, slot = "counts")[
    intersect(known, rownames(objs$ref)), , drop = FALSE])
  expect_equal(unname(counts), unname(expected_counts(vals, depth)), tolerance = 1e-5)
  # not below the values' plain counts, expm1(data) * depth / 1e4
  expect_true(all(counts >= sweep(expm1(as.matrix(vals)), 2, depth / 1e4, `*`) * (1 - 1e-5)))
  # FAST has the spot deconvolution: each spot's proportions of the reference's cell types
  props <- as.matrix(SeuratObject::GetAssayData(out, assay = "SpaLSTF.proportions",
                                                slot = "data"))
  expect_identical(dimnames(props), list(c("A", "B"), colnames(st)))
  expect_true(all(props >= 0) && isTRUE(all.equal(unname(colSums(props)), rep(1, ncol(st)),
                                                  tolerance = 1e-5)))
  expect_identical(SeuratObject::Tool(out, "Impute")$proportions.assay.name,
                   "SpaLSTF.proportions")
  std <- SeuratObject::GetAssayData(out, assay = "SpaLSTF.std", slot = "data")
  expect_identical(dimnames(std), dimnames(vals))
  expect_true(all(std >= 0) && any(std > 0))
  expect_identical(out[["SpaLSTF.std"]]@meta.features$feature_name, genes)
  expect_null(SeuratObject::Misc(a, "std"))  # no second copy that subset() would not follow
  tool <- SeuratObject::Tool(out, "Impute")
  expect_identical(tool$genes, genes)
  expect_identical(tool$seed, 0L)
  expect_identical(tool$n_samples, 2L)
  expect_true(any(grepl("Impute", names(out@commands))))
  # same seed, same values; and set.default
  again <- do.call(Impute, c(list(st, objs$ref, genes = genes, set.default = TRUE), FAST))
  expect_identical(SeuratObject::GetAssayData(again, assay = "SpaLSTF", slot = "data"), vals)
  expect_identical(SeuratObject::DefaultAssay(again), "SpaLSTF")
  # a second run replaces the assays (the default one too), saying so
  expect_warning(twice <- do.call(Impute, c(list(again, objs$ref, genes = "G17",
                                                assay = "Spatial"), FAST)),
                 paste0("Assays \"SpaLSTF\", \"SpaLSTF.std\", \"SpaLSTF.lower\", ",
                        "\"SpaLSTF.upper\" and \"SpaLSTF.proportions\" replaced"))
  expect_identical(rownames(twice[["SpaLSTF.std"]]), "G17")
  expect_identical(rownames(twice[["SpaLSTF.upper"]]), "G17")
  expect_error(Impute(st, objs$ref, genes = "G17", assay = "Spatial", new.assay.name = "Spatial"),
               "must differ from `assay`")
  # nor may the interval's assays overwrite the input
  odd <- SeuratObject::CreateSeuratObject(Matrix::Matrix(d$st, sparse = TRUE),
                                          assay = "SpaLSTF.lower")
  expect_error(Impute(odd, objs$ref, genes = "G17"),
               "\"SpaLSTF.lower\", \"SpaLSTF.upper\" for the standard deviation and the interval")
})

test_that("the uncertainty assay follows subset(), merge() and Seurat's plots", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  d <- tiny_counts()
  objs <- tiny_seurat(d)
  st <- objs$st
  st[["fov"]] <- SeuratObject::CreateFOV(
    data.frame(x = st$x, y = st$y, cell = colnames(st)), type = "centroids",
    assay = "Spatial", key = "fov_")
  genes <- c("G17", "GENE_U1")
  out <- do.call(Impute, c(list(st, objs$ref, genes = genes), FAST))
  vals <- as.matrix(SeuratObject::GetAssayData(out, assay = "SpaLSTF", slot = "data"))
  std <- as.matrix(SeuratObject::GetAssayData(out, assay = "SpaLSTF.std", slot = "data"))
  # subset(): the kept cells, in both assays, with the full object's values
  keep <- colnames(out)[c(30, 2, 17, 5)]
  sub <- subset(out, cells = keep)
  sub_std <- as.matrix(SeuratObject::GetAssayData(sub, assay = "SpaLSTF.std", slot = "data"))
  expect_setequal(colnames(sub_std), keep)
  expect_identical(colnames(sub_std), colnames(sub))
  expect_identical(sub_std, std[, colnames(sub), drop = FALSE])
  expect_identical(as.matrix(SeuratObject::GetAssayData(sub, assay = "SpaLSTF", slot = "data")),
                   vals[, colnames(sub), drop = FALSE])
  # merge() of two results: both assays, every cell, the values of each part
  first <- colnames(out)[1:12]
  rest <- colnames(out)[13:30]
  merged <- merge(subset(out, cells = first), subset(out, cells = rest))
  expect_true(all(c("SpaLSTF", "SpaLSTF.std") %in% SeuratObject::Assays(merged)))
  merged_std <- as.matrix(SeuratObject::GetAssayData(merged, assay = "SpaLSTF.std", slot = "data"))
  expect_identical(merged_std[rownames(std), colnames(std)], std)
  # plots read the uncertainty by the assay's key: a spatial map of the field of view, and
  # FeaturePlot() on a reduction
  p <- Seurat::ImageFeaturePlot(out, features = c("spalstf_G17", "spalstfstd_G17"))
  plotted <- p[[2]]$data
  expect_equal(plotted[["spalstfstd_G17"]],
               unname(std["G17", sub("^centroids_", "", plotted$cell)]))
  out[["xy"]] <- SeuratObject::CreateDimReducObject(
    embeddings = cbind(xy_1 = out$x, xy_2 = out$y), key = "xy_", assay = "Spatial")
  fp <- Seurat::FeaturePlot(out, features = "spalstfstd_G17", reduction = "xy")
  expect_equal(as.numeric(fp$data[["spalstfstd_G17"]]), unname(std["G17", rownames(fp$data)]))
})

test_that("Impute on matrices and SingleCellExperiment gives the Seurat values", {
  skip_if_no_spalstf()
  skip_if_no_seurat()
  skip_if_no_sce()
  d <- tiny_counts()
  objs <- tiny_seurat(d)
  # the same data in every format: a matrix carries no cell types, so neither does the
  # Seurat reference here (the spot deconvolution in FAST would use them as its units)
  objs$ref$cell_type <- NULL
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
  # the spot deconvolution's proportions (units: clusters of this untyped reference), the
  # same from the matrix and the SingleCellExperiment
  props <- SummarizedExperiment::assay(
    SingleCellExperiment::altExp(out, "SpaLSTF.proportions"), "proportions")
  expect_identical(colnames(props), colnames(sce))
  expect_equal(unname(colSums(props)), rep(1, ncol(sce)), tolerance = 1e-5)
  expect_equal(props, attr(m, "proportions"), tolerance = 1e-6)
  # the uncertainty of the alternative experiment follows column subsetting
  keep <- colnames(sce)[c(9, 3, 20)]
  alt_std <- SummarizedExperiment::assay(alt, "std")
  sub <- SingleCellExperiment::altExp(out[, keep], "SpaLSTF")
  expect_identical(colnames(sub), keep)
  expect_identical(SummarizedExperiment::assay(sub, "std"), alt_std[, keep, drop = FALSE])
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
  p2 <- predict(loaded, objs$st, n.steps = 2L, n.samples = 2L, verbose = FALSE)
  expect_equal(unname(p2[, ]), unname(p[, ]), tolerance = 1e-6)
  # a bare matrix has no coordinates (the Seurat object has x/y): the values of the object
  # without its spatial context
  pm <- predict(loaded, d$st, n.steps = 2L, n.samples = 2L, verbose = FALSE)
  flat <- predict(model, objs$st, n.steps = 2L, n.samples = 2L, verbose = FALSE,
                  spatial = FALSE)
  expect_equal(unname(pm[, ]), unname(flat[, ]), tolerance = 1e-6)
  # Given the ST, the model learns the combination on its known genes and keeps it: predict()
  # then gives the interval, which the fixed blend of a model fitted without it lacks.
  expect_null(attr(p, "lower"))
  learnt <- FitSpaLSTF(objs$ref, known.genes = d$known, target.genes = d$targets,
                       epochs = 1L, verbose = FALSE, st = objs$st)
  pl <- predict(learnt, objs$st, verbose = FALSE)
  expect_identical(dim(attr(pl, "lower")), dim(pl))
  expect_identical(dimnames(attr(pl, "counts")), dimnames(pl))
  expect_null(attr(pl, "proportions"))  # the default predictors: no spot deconvolution
  expect_true(all(attr(pl, "counts") >= 0) && any(attr(pl, "counts") > 0))
  expect_true(all(attr(pl, "lower") >= 0 & attr(pl, "lower") <= attr(pl, "upper")) &&
                any(attr(pl, "upper") > attr(pl, "lower")))
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
