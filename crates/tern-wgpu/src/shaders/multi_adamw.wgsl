// AdamW on {{K}} tensors in one dispatch (ops/multi.rs): tensor t holds the
// global indices end(t - 1)..end(t) and is bound whole from its first
// element. The update is dense_elem.wgsl's ADAMW expression for expression
// (bit-identical: the conformance suite compares them); f0..f6 and `one`
// have the same meaning there.
struct P {
    f0: f32,
    f1: f32,
    f2: f32,
    f3: f32,
    f4: f32,
    f5: f32,
    f6: f32,
    one: f32,
    ends: array<vec4<u32>, 8>,
}
@group(0) @binding(0) var<uniform> p: P;
{{BINDINGS}}
fn end(t: u32) -> u32 {
    return p.ends[t / 4u][t % 4u];
}
{{STEPS}}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
{{DISPATCH}}}
