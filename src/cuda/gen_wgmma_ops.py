# Writes wgmma_ops.inc (the wgmma inline-asm wrappers of the sm_90 kernels, sm90.h): python3 gen_wgmma_ops.py
def ss(n, ty, tyname, name="ss", trans="0, 0"):
    """A and B from descriptors; trans: the imm-trans-a, imm-trans-b flags (1 = MN-major)."""
    nreg = n // 2
    regs = ", ".join(f"%{i}" for i in range(nreg))
    cons = ", ".join(f'"+f"(d[{i}])' for i in range(nreg))
    return f'''__device__ __forceinline__ void wgmma_{name}_n{n}_{tyname}(float *d, uint64_t da, uint64_t db, int scale_d) {{
    asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{nreg+2}, 0;\\n"
                 "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty} "
                 "{{{regs}}}, %{nreg}, %{nreg+1}, p, 1, 1, {trans};\\n}}\\n"
                 : {cons}
                 : "l"(da), "l"(db), "r"(scale_d));
}}
'''
def rs(n, ty, tyname):
    nreg = n // 2
    regs = ", ".join(f"%{i}" for i in range(nreg))
    cons = ", ".join(f'"+f"(d[{i}])' for i in range(nreg))
    return f'''__device__ __forceinline__ void wgmma_rs_n{n}_{tyname}(float *d, const uint32_t *a, uint64_t db) {{
    asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{nreg+5}, 0;\\n"
                 "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty} "
                 "{{{regs}}}, {{%{nreg}, %{nreg+1}, %{nreg+2}, %{nreg+3}}}, %{nreg+4}, p, 1, 1, 1;\\n}}\\n"
                 : {cons}
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}}
'''
def rsk(n, ty, tyname):
    nreg = n // 2
    regs = ", ".join(f"%{i}" for i in range(nreg))
    cons = ", ".join(f'"+f"(d[{i}])' for i in range(nreg))
    return f'''__device__ __forceinline__ void wgmma_rsk_n{n}_{tyname}(float *d, const uint32_t *a, uint64_t db, int scale_d) {{
    asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{nreg+5}, 0;\\n"
                 "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty} "
                 "{{{regs}}}, {{%{nreg}, %{nreg+1}, %{nreg+2}, %{nreg+3}}}, %{nreg+4}, p, 1, 1, 0;\\n}}\\n"
                 : {cons}
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
}}
'''
out = ["/* wgmma m64nNk16 wrappers, fp32 accumulate; generated (one line per register is all they differ in).",
       " * ss: A and B from shared-memory descriptors, both K-major; d = A B (+ d when scale_d != 0).",
       " * sst: A and B from shared-memory descriptors, both MN-major (transposed); d = A B (+ d when scale_d != 0).",
       " * rs: A from registers, B from a descriptor, MN-major (transposed); d += A B.",
       " * rsk: A from registers, B from a descriptor, K-major; d = A B (+ d when scale_d != 0). */"]
for ty, nm in (("bf16", "bf16"), ("f16", "f16")):
    out.append(ss(64, ty, nm))
    out.append(ss(64, ty, nm, "sst", "1, 1"))
    out.append(rs(64, ty, nm))
    out.append(rsk(64, ty, nm))
    out.append(rs(128, ty, nm))
    out.append(rsk(128, ty, nm))
open(__import__("os").path.join(__import__("os").path.dirname(__file__), "wgmma_ops.inc"), "w").write("\n".join(out))
