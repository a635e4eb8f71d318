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
#' @keywords internal
#' @importClassesFrom Matrix dgCMatrix
"_PACKAGE"
