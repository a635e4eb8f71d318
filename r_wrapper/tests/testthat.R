library(testthat)
library(SpaLSTF)

test_check("SpaLSTF")
