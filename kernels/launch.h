// Programmatic dependent launch (PDL, sm_90 and later) for the kernels of a decode step: a kernel
// launched with it may start while the kernel before it in the stream still runs; it waits
// (griddepcontrol.wait, detail::WaitForPrecedingGrid in bf16_utils.cuh) before it touches memory
// that earlier work writes, so results are those of ordinary launches. What it saves is the launch
// gap between consecutive small kernels, and for the GEMV the first DRAM round trip of its weights
// (gemm_gemv.cu). Kernels launched this way: the GEMV, RmsNorm/FusedAddRmsNorm, SiluAndMul, the
// paged decode attention and its split combine, and the decode worker's fused q|k|v epilogue.
#pragma once

namespace asyncspade::kernels::cuda {

// Process-wide, on by default; off gives ordinary launches (asyncspade-bench-decode compares the
// two). Launches already captured in a CUDA graph keep the mode they were captured with.
void SetProgrammaticLaunch(bool enabled);
bool ProgrammaticLaunch();
// Whether launches on the current device use it now: enabled and compute capability ≥ 9 (cached
// per device). False if the device cannot be queried.
bool UseProgrammaticLaunch();

}  // namespace asyncspade::kernels::cuda
