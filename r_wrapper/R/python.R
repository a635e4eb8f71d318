# Finding, activating and installing the Python side (one place does it all).

.spalstf <- new.env(parent = emptyenv())

#' Name of the virtual environment that install_spalstf() creates
#' @noRd
.spalstf_envname <- "r-spalstf"

# Does `python` (a path) have the spalstf module? Asked in a subprocess so that nothing is
# initialised in this R session.
.python_has_spalstf <- function(python) {
  if (!nzchar(python) || !file.exists(python)) {
    return(FALSE)
  }
  code <- "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('spalstf') else 1)"
  status <- tryCatch(
    suppressWarnings(system2(python, c("-c", shQuote(code)), stdout = FALSE, stderr = FALSE)),
    error = function(e) 1L
  )
  identical(as.integer(status), 0L)
}

# The places SpaLSTF looks, in order: each a function giving a Python path (or "") that is
# only called when the earlier ones did not give a Python with spalstf.
.python_sources <- list(
  list(source = "option SpaLSTF.python", explicit = TRUE,
       get = function() getOption("SpaLSTF.python", "")),
  list(source = "environment variable SPALSTF_PYTHON", explicit = TRUE,
       get = function() Sys.getenv("SPALSTF_PYTHON", "")),
  list(source = "reticulate", explicit = FALSE, get = function() {
    if (reticulate::py_available(initialize = FALSE)) {
      return(reticulate::py_config()$python)
    }
    cfg <- tryCatch(
      suppressWarnings(reticulate::py_discover_config(required_module = "spalstf")),
      error = function(e) NULL
    )
    if (is.null(cfg)) "" else cfg$python
  }),
  list(source = "virtualenv 'r-spalstf'", explicit = FALSE, get = function() {
    tryCatch(
      if (reticulate::virtualenv_exists(.spalstf_envname)) {
        reticulate::virtualenv_python(.spalstf_envname)
      } else {
        ""
      },
      error = function(e) ""
    )
  })
)

.not_found_message <- function(candidates, reason = NULL) {
  looked <- if (length(candidates)) {
    vapply(candidates, function(c) sprintf("  - %s: %s", c$source, c$python), "")
  } else {
    "  - (no Python found at all)"
  }
  paste0(
    "SpaLSTF could not find a Python with the 'spalstf' module.",
    if (!is.null(reason)) paste0("\n", reason) else "",
    "\nLooked in (in this order): option SpaLSTF.python, environment variable SPALSTF_PYTHON, ",
    "reticulate's discovery, virtualenv '", .spalstf_envname, "'. Pythons seen:\n",
    paste(looked, collapse = "\n"),
    "\nInstall it with SpaLSTF::install_spalstf() (a virtualenv '", .spalstf_envname,
    "' with pip install spalstf), or point SPALSTF_PYTHON at a python that has it, e.g. ",
    "Sys.setenv(SPALSTF_PYTHON = \"/path/to/venv/bin/python\"), then restart R."
  )
}

#' Which Python SpaLSTF uses
#'
#' Looks, in this order, at the option \code{SpaLSTF.python}, the environment variable
#' \code{SPALSTF_PYTHON}, the Python reticulate finds on its own (or has already started),
#' and the virtual environment \code{r-spalstf} made by \code{\link{install_spalstf}()}, and
#' returns the first that has the \code{spalstf} module. An explicitly named Python
#' (option or environment variable) must have it. Nothing is started.
#'
#' @return The path of the Python executable, or an error naming every place searched and
#'   the command that installs the Python side.
#' @examples
#' \dontrun{
#' spalstf_python()
#' }
#' @export
spalstf_python <- function() {
  initialised <- if (reticulate::py_available(initialize = FALSE)) {
    normalizePath(reticulate::py_config()$python, mustWork = FALSE)
  } else {
    NULL
  }
  seen <- list()
  for (src in .python_sources) {
    python <- src$get()
    if (length(python) != 1L || is.na(python) || !nzchar(python)) next
    python <- path.expand(python)
    if (!grepl("^(/|[A-Za-z]:)", python)) python <- file.path(getwd(), python)  # keep symlinks
    seen[[length(seen) + 1L]] <- list(source = src$source, python = python)
    ok <- .python_has_spalstf(python)
    if (!ok && src$explicit) {
      stop(.not_found_message(seen, sprintf(
        "The Python named by the %s (%s) has no 'spalstf' module (or does not exist).",
        src$source, python
      )), call. = FALSE)
    }
    if (!ok) next
    if (!is.null(initialised) && normalizePath(python, mustWork = FALSE) != initialised) {
      stop(sprintf(paste0(
        "SpaLSTF wants the Python from the %s (%s), but reticulate has already ",
        "started %s in this R session. Restart R, then use SpaLSTF before anything ",
        "else that starts Python (or set SPALSTF_PYTHON to the Python already running)."
      ), src$source, python, initialised), call. = FALSE)
    }
    return(python)
  }
  stop(.not_found_message(seen), call. = FALSE)
}

#' Is the Python side of SpaLSTF available?
#'
#' @return \code{TRUE} when a Python with the \code{spalstf} module can be found (and started),
#'   \code{FALSE} otherwise. Never an error.
#' @examples
#' spalstf_available()
#' @export
spalstf_available <- function() {
  if (!is.null(.spalstf$module)) {
    return(TRUE)
  }
  isTRUE(tryCatch(!is.null(.spalstf_module()), error = function(e) FALSE))
}

# The imported spalstf module (convert = FALSE), initialising Python on first use.
.spalstf_module <- function() {
  if (is.null(.spalstf$module)) {
    python <- spalstf_python()
    # RETICULATE_PYTHON is the first thing reticulate reads when it starts: set it for the
    # start only, so that nothing else (a pyproject.toml in the working folder, say) is tried.
    old <- Sys.getenv("RETICULATE_PYTHON", unset = NA)
    Sys.setenv(RETICULATE_PYTHON = python)
    on.exit(if (is.na(old)) Sys.unsetenv("RETICULATE_PYTHON") else
      Sys.setenv(RETICULATE_PYTHON = old), add = TRUE)
    reticulate::use_python(python, required = TRUE)
    # torch first, bound to its own BLAS rather than R's (see inst/python/spalstf_rinit.py).
    init <- .py_try(reticulate::import_from_path(
      "spalstf_rinit", path = system.file("python", package = "SpaLSTF"), convert = TRUE
    ))
    .spalstf$torch_import <- .py_try(init$import_torch())
    .spalstf$module <- .py_try(reticulate::import("spalstf", convert = FALSE))
    .spalstf$python <- python
  }
  .spalstf$module
}

# The bridge helpers of the spalstf in use (spalstf.io._rbridge: numpy, scipy, pandas and
# anndata only), which spalstf.io's read_rds / write_rds share.
.bridge <- function() {
  if (is.null(.spalstf$bridge)) {
    .spalstf_module()
    .spalstf$bridge <- .py_try(reticulate::import("spalstf.io._rbridge", convert = FALSE))
  }
  .spalstf$bridge
}

# Run `expr`; a Python exception becomes an R error with Python's own message
# (str(exception)), of class c("spalstf_python_error", "<PythonType>", "error", "condition").
.py_try <- function(expr) {
  reticulate::py_clear_last_error()
  tryCatch(expr, error = function(e) {
    err <- tryCatch(reticulate::py_last_error(), error = function(e2) NULL)
    if (is.null(err) || is.null(err$type)) {
      stop(e)
    }
    msg <- sub("\n+$", "", as.character(err$value))
    cond <- structure(
      class = c("spalstf_python_error", as.character(err$type), "error", "condition"),
      list(message = msg, call = NULL, python_type = as.character(err$type),
           traceback = err$traceback)
    )
    stop(cond)
  })
}

#' Install the Python side of SpaLSTF
#'
#' Creates (or reuses) the virtual environment \code{r-spalstf} and installs the
#' \code{spalstf} Python package into it with pip. SpaLSTF finds that environment on its own
#' (see \code{\link{spalstf_python}()}). Restart R afterwards if Python was already started.
#'
#' @param envname Name of (or path to) the virtual environment.
#' @param package What pip installs: \code{"spalstf"} from PyPI, or a local path such as
#'   the root of a clone of the repository.
#' @param python The Python used to create the environment (\code{NULL}: the one reticulate
#'   would use; must be Python >= 3.10).
#' @param extra_packages Further pip requirements, e.g. a CPU build of torch.
#' @param ... Passed to \code{reticulate::virtualenv_install()}.
#' @return The path of the environment's Python, invisibly.
#' @examples
#' \dontrun{
#' install_spalstf()
#' install_spalstf(package = "/path/to/spalstf")  # a local clone
#' }
#' @export
install_spalstf <- function(envname = .spalstf_envname, package = "spalstf", python = NULL,
                            extra_packages = NULL, ...) {
  if (!is.character(package) || length(package) != 1L || !nzchar(package)) {
    stop("`package` must be one string (a pip requirement or a path), received: ",
         paste(deparse(package), collapse = " "), call. = FALSE)
  }
  if (!reticulate::virtualenv_exists(envname)) {
    reticulate::virtualenv_create(envname, python = python)
  }
  # numpy < 2: reticulate 1.28 cannot convert numpy 2 arrays.
  pkgs <- c("numpy<2", package, extra_packages)
  reticulate::virtualenv_install(envname, packages = pkgs, ignore_installed = FALSE, ...)
  invisible(reticulate::virtualenv_python(envname))
}

#' Version of the spalstf Python module in use
#' @return A character string.
#' @noRd
.spalstf_py_version <- function() {
  reticulate::py_to_r(.spalstf_module()$`__version__`)
}
