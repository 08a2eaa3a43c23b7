# Debian's libtorch calls BLAS through libblas.so.3, which the alternatives system may point at the
# reference BLAS: it works, but matrix products run ~80x slower. Find what torch really loads.
function(lumen_check_torch_blas)
  find_library(LUMEN_TORCH_CPU_LIB torch_cpu HINTS ${TORCH_INSTALL_PREFIX}/lib)
  find_program(LUMEN_LDD ldd)
  if(NOT LUMEN_TORCH_CPU_LIB OR NOT LUMEN_LDD)
    message(STATUS "lumen: cannot inspect torch's BLAS (no torch_cpu library or ldd)")
    return()
  endif()
  execute_process(COMMAND ${LUMEN_LDD} ${LUMEN_TORCH_CPU_LIB} OUTPUT_VARIABLE deps ERROR_QUIET)
  string(REGEX MATCH "libblas\\.so[.0-9]* => ([^ \n]+)" hit "${deps}")
  if(NOT hit)
    message(STATUS "lumen: torch does not load libblas.so (it brings its own BLAS)")
    return()
  endif()
  get_filename_component(real "${CMAKE_MATCH_1}" REALPATH)
  if(real MATCHES "openblas|blis|mkl|atlas")
    message(STATUS "lumen: torch BLAS -> ${real}")
  else()
    message(WARNING "lumen: torch's BLAS resolves to ${real}, which looks like the REFERENCE BLAS. "
      "Matrix products will be ~80x slower. Install libopenblas0-pthread "
      "(apt-get install libopenblas0-pthread) or select it with update-alternatives.")
  endif()
endfunction()
