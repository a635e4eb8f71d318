#' SpaLSTF: impute unmeasured genes of spatial transcriptomics from R
#'
#' R interface to the Python package \code{spalstf}: \code{\link{Impute}} for Seurat objects,
#' SingleCellExperiment objects and matrices, \code{\link{FitSpaLSTF}} /
#' \code{\link{SaveSpaLSTF}} / \code{\link{LoadSpaLSTF}} for models,
#' \code{\link{CrossValidate}} for leave-genes-out evaluation, and in-memory converters
#' (\code{\link{SeuratToAnnData}}, \code{\link{AnnDataToSeurat}}, \code{\link{SCEToAnnData}},
#' \code{\link{AnnDataToSCE}}). The Python side is found by \code{\link{spalstf_python}} and
#' installed by \code{\link{install_spalstf}}.
#'
#' Speed: R loads the BLAS it was built with (often the slow reference BLAS) into its process,
#' and torch exports its own BLAS under the same symbol names, so on Linux torch's matrix
#' products would run on R's BLAS (10 to 20 times slower). SpaLSTF therefore imports torch
#' with \code{RTLD_DEEPBIND} (its libraries use their own symbols first) when it starts Python;
#' set the environment variable \code{SPALSTF_DEEPBIND=0} to turn this off. Import SpaLSTF
#' before anything else that imports torch in the same R session. On CPU, torch uses every
#' core unless \code{OMP_NUM_THREADS} or \code{SPALSTF_NUM_THREADS} says otherwise; on a
#' machine shared with other CPU-heavy work, fewer threads can be much faster.
#'
#' @keywords internal
#' @importClassesFrom Matrix dgCMatrix
"_PACKAGE"
