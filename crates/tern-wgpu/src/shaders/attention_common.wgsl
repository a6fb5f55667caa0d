// Shared by the attention kernels (attention.wgsl, attention_bwd.wgsl): the
// sizes the host chose for the tiles, and the loads of four elements of q, k
// and v (the kernels bind them as `q`, `k`, `v`; as vec4 with GV4).
const HD: u32 = {{HD}}u;
const HD4: u32 = {{HD4}}u;
const HP4: u32 = {{HP4}}u;
const R: u32 = {{R}}u;
const BK: u32 = {{BK}}u;
const NT: u32 = 64u;
const DS: u32 = {{DS}}u;
const SROWS: u32 = {{SROWS}}u;
const SCOLS: u32 = {{SCOLS}}u;
const RG: u32 = {{RG}}u;
const DL: u32 = {{DL}}u;

// Four elements from element offset `o` (`n` of them valid).
#ifdef GV4
fn ldq(o: u32, n: u32) -> vec4<f32> {
    return q[o / 4u];
}
fn ldk(o: u32, n: u32) -> vec4<f32> {
    return k[o / 4u];
}
fn ldv(o: u32, n: u32) -> vec4<f32> {
    return v[o / 4u];
}
#endif
#ifndef GV4
fn ldq(o: u32, n: u32) -> vec4<f32> {
    var x = vec4<f32>(q[o], 0.0, 0.0, 0.0);
    if (n > 1u) { x.y = q[o + 1u]; }
    if (n > 2u) { x.z = q[o + 2u]; }
    if (n > 3u) { x.w = q[o + 3u]; }
    return x;
}
fn ldk(o: u32, n: u32) -> vec4<f32> {
    var x = vec4<f32>(k[o], 0.0, 0.0, 0.0);
    if (n > 1u) { x.y = k[o + 1u]; }
    if (n > 2u) { x.z = k[o + 2u]; }
    if (n > 3u) { x.w = k[o + 3u]; }
    return x;
}
fn ldv(o: u32, n: u32) -> vec4<f32> {
    var x = vec4<f32>(v[o], 0.0, 0.0, 0.0);
    if (n > 1u) { x.y = v[o + 1u]; }
    if (n > 2u) { x.z = v[o + 2u]; }
    if (n > 3u) { x.w = v[o + 3u]; }
    return x;
}
#endif
