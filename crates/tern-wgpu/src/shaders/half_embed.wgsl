// Embedding gather from an f16 table packed two per u32 (low half first):
// y[r] = f32(table[ids[r]]), one thread per element, over a 2-D window: a
// block of rows of ids/y and columns [c0, c0 + cols), against the table
// rows [v0, v0 + vw) bound in this pass (ids outside it are left to other
// passes). The table's shift `st` counts halves. Parameters: `EmbedParams`
// (shaders/dense_embed.wgsl's layout; `sl` unused).
struct P {
    rows: u32,
    cols: u32,
    ld: u32,
    sy: u32,
    st: u32,
    si: u32,
    v0: u32,
    vw: u32,
    sl: u32,
    groups: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let e = (wg.y * nwg.x + wg.x) * 256u + t;
    if (e >= p.rows * p.cols) {
        return;
    }
    let r = e / p.cols;
    let col = e % p.cols;
    let id = ids[p.si + r];
    if (id >= p.v0 && id - p.v0 < p.vw) {
        let h = p.st + (id - p.v0) * p.ld + col;
        let v = unpack2x16float(table[h >> 1u]);
        y[p.sy + r * p.ld + col] = select(v.x, v.y, (h & 1u) == 1u);
    }
}
