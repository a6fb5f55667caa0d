// {{K}} independent products `c = alpha op(a) op(b) + beta c` in one
// dispatch (ops/multi.rs): the LoRA products of the projections that share
// an input, and their gradients. Problem t takes workgroups
// word(t - 1, 6)..word(t, 6); its operands are bound whole from their first
// element. Per problem, eight words: m, n, k, flags (bit 0: A stored
// [k, m]; bit 1: B stored [n, k]; bits 8..: log2 of S), alpha, beta (f32
// bits), the end of its workgroups, unused. S threads share one output:
// each sums every S-th term of the k range, then a fixed-order tree adds
// the S partial sums (deterministic; 256 / S outputs per workgroup).
struct P {
    q: array<vec4<u32>, 16>,
}
@group(0) @binding(0) var<uniform> p: P;
{{BINDINGS}}
var<workgroup> red: array<f32, 256>;

fn word(t: u32, w: u32) -> u32 {
    return p.q[t * 2u + w / 4u][w % 4u];
}
{{PROBLEMS}}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lt: u32) {
    let wg = wid.y * nwg.x + wid.x;
{{DISPATCH}}}
