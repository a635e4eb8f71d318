# Bad inputs reach R users as R errors carrying Python's one-line message (never a Python
# traceback), and the inputs are left as they were.

# The error raised by `expr`, checked to be an R error whose message has no Python traceback.
r_error <- function(expr) {
  err <- tryCatch({
    expr
    NULL
  }, error = identity)
  expect_s3_class(err, "error")
  expect_false(grepl("Traceback|File \".*\\.py\"", conditionMessage(err)))
  err
}

test_that("bad values in the data are R errors naming the input and the hint", {
  skip_if_no_spalstf()
  d <- tiny_counts()
  genes <- c("G17", "G18")
  with_nan <- d$st
  with_nan[2, 3] <- NA
  err <- r_error(do.call(Impute, c(list(with_nan, d$ref, genes = genes), FAST)))
  expect_s3_class(err, "ValueError")
  expect_match(conditionMessage(err), "NaN or infinite values .*spot_03-1")
  negative <- d$st
  negative[1, 1] <- -1
  err <- r_error(do.call(Impute, c(list(negative, d$ref, genes = genes), FAST)))
  expect_match(conditionMessage(err), "negative values")
  fractional <- d$st + 0.5
  err <- r_error(do.call(Impute, c(list(fractional, d$ref, genes = genes), FAST)))
  expect_match(conditionMessage(err), "non-integer values.*log_normalized=True")
  # Declared log-normalised, the same values are accepted.
  out <- do.call(Impute, c(list(log1p(d$st), log1p(d$ref), genes = genes,
                                log.normalized = TRUE), FAST))
  expect_true(all(is.finite(out)))
})

test_that("bad names, genes and options are R errors that name the argument", {
  skip_if_no_spalstf()
  d <- tiny_counts()
  dup <- d$st
  rownames(dup)[2] <- rownames(dup)[1]
  err <- r_error(do.call(Impute, c(list(dup, d$ref, genes = "G17"), FAST)))
  expect_match(conditionMessage(err), "`object` must have unique gene names")
  other <- d$st
  rownames(other) <- paste0("X", seq_len(nrow(other)))
  err <- r_error(do.call(Impute, c(list(other, d$ref, genes = "G17"), FAST)))
  expect_match(conditionMessage(err), "share no genes")
  err <- r_error(do.call(Impute, c(list(d$st[, 0, drop = FALSE], d$ref, genes = "G17"), FAST)))
  expect_match(conditionMessage(err), "is empty")
  err <- r_error(Impute(d$st, d$ref, genes = "G17", epochs = 0, verbose = FALSE))
  expect_match(conditionMessage(err), "`epochs` must be")
  err <- r_error(do.call(Impute, c(list(d$st, d$ref, genes = "G17", batch_size = -4L), FAST)))
  expect_s3_class(err, "ValueError")
  expect_match(conditionMessage(err), "`batch_size` must be a positive integer; received -4")
  err <- r_error(do.call(Impute, c(list(d$st, d$ref, genes = "G17", device = "tpu"), FAST)))
  expect_match(conditionMessage(err), "`device`")
})

test_that("a model refuses data without its genes, and checkpoints work from R", {
  skip_if_no_spalstf()
  d <- tiny_counts()
  ckpt <- tempfile(fileext = ".ckpt")
  # checkpoints hold the network's training: it is asked for (not a default predictor)
  model <- FitSpaLSTF(d$ref, known.genes = d$known, target.genes = d$targets, epochs = 2L,
                      verbose = FALSE, checkpoint = ckpt, checkpoint_every = 1L,
                      predictors = ALL_PREDICTORS)
  expect_true(file.exists(ckpt))
  err <- r_error(FitSpaLSTF(d$ref, known.genes = d$known, target.genes = d$targets,
                            epochs = 2L, verbose = FALSE, checkpoint = ckpt,
                            predictors = ALL_PREDICTORS))
  expect_s3_class(err, "FileExistsError")
  resumed <- FitSpaLSTF(d$ref, known.genes = d$known, target.genes = d$targets, epochs = 3L,
                        verbose = FALSE, resume = ckpt, predictors = ALL_PREDICTORS)
  expect_identical(resumed$known.genes, model$known.genes)
  st <- d$st
  before <- st
  rownames(st)[1:3] <- c("A1", "A2", "A3")
  err <- r_error(predict(model, st, n.steps = 2L, n.samples = 2L, verbose = FALSE))
  expect_match(conditionMessage(err), "lacks 3 of the model's 16 known genes")
  p <- predict(model, before, n.steps = 2L, n.samples = 2L, verbose = FALSE)
  expect_true(all(is.finite(p)) && all(p >= 0))
  unlink(ckpt)
})
