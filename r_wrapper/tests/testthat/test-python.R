# Finding Python, installing it, and Python errors as R errors.

test_that("an explicit SPALSTF_PYTHON without spalstf gives an error naming where it looked", {
  old <- Sys.getenv("SPALSTF_PYTHON", unset = NA)
  on.exit(if (is.na(old)) Sys.unsetenv("SPALSTF_PYTHON") else Sys.setenv(SPALSTF_PYTHON = old))
  Sys.setenv(SPALSTF_PYTHON = "/nonexistent/bin/python")
  err <- tryCatch(spalstf_python(), error = identity)
  expect_s3_class(err, "error")
  msg <- conditionMessage(err)
  expect_match(msg, "environment variable SPALSTF_PYTHON (/nonexistent/bin/python)", fixed = TRUE)
  expect_match(msg, "virtualenv 'r-spalstf'", fixed = TRUE)
  expect_match(msg, "SpaLSTF::install_spalstf()", fixed = TRUE)
})

test_that("install_spalstf checks its arguments before doing anything", {
  expect_error(install_spalstf(package = c("a", "b")), "`package` must be one string")
  expect_error(install_spalstf(package = ""), "`package` must be one string")
})

test_that("spalstf_python finds the Python in use and spalstf_available() agrees", {
  skip_if_no_spalstf()
  py <- spalstf_python()
  expect_true(file.exists(py))
  expect_true(spalstf_available())
})

test_that("CrossValidate returns the Python metrics as a data.frame", {
  skip_if_no_spalstf()
  d <- tiny_counts()
  cv <- CrossValidate(d$st, d$ref, n.folds = 2L, methods = c("mean", "knn"))
  expect_s3_class(cv, "data.frame")
  expect_setequal(unique(as.character(cv$method)), c("mean", "knn"))
  expect_true(all(c("gene", "fold") %in% names(cv)))
  expect_setequal(unique(as.character(cv$gene)), d$known)  # every shared gene held out once
  expect_s3_class(attr(cv, "summary"), "data.frame")
  expect_error(CrossValidate(d$st, d$ref, n.folds = 1L), "`n.folds` must be")
})

test_that("torch runs on its own BLAS inside R, not on R's (RTLD_DEEPBIND)", {
  skip_if_no_spalstf()
  skip_on_os(c("windows", "mac", "solaris"))
  expect_identical(SpaLSTF:::.spalstf$torch_import, "torch imported with RTLD_DEEPBIND")
  # Bound to R's reference BLAS, torch's float32 products were 10-20x slower than numpy's
  # float64 ones (numpy's OpenBLAS has its own symbol names); with its own BLAS, faster.
  res <- reticulate::py_run_string(paste(
    "def matmul_ratio():",
    "    import time, numpy as np, torch",
    "    n = torch.get_num_threads()",
    "    torch.set_num_threads(1)",
    "    a, b = torch.randn(256, 256), np.random.rand(256, 256)",
    "    def best(f):",
    "        times = []",
    "        for _ in range(5):",
    "            s = time.perf_counter()",
    "            for _ in range(20): f()",
    "            times.append(time.perf_counter() - s)",
    "        return min(times)",
    "    try:",
    "        return best(lambda: a @ a) / best(lambda: b @ b)",
    "    finally:",
    "        torch.set_num_threads(n)",
    "ratio = matmul_ratio()", sep = "\n"), local = TRUE)
  expect_lt(res$ratio, 3)
})
