//#include exact
// W1.58A8 product for many activation rows (prefill, training): a BM x 64
// tile of y per workgroup (16 x 16 threads, TM x 4 outputs each, rows
// ty + 16i and features tx + 16j; BM = 16 TM), stepping 8 packed weight
// words (128 columns) at a time. Each step stages the int8 activations
// (BM rows x 32 words) and the packed weights (64 features x 8 words) in
// workgroup memory, transposed so that threads read consecutive words
// (10 KiB at BM = 64); every weight word is decoded in registers (a shift and
// a mask per 4 codes) and reused across the thread's TM rows, every
// activation word across its 4 features.
// Layout, exactness and chunking as in ternary_mv.wgsl.
//#include ternary_product_params
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> st: array<u32>;
@group(0) @binding(4) var<storage, read> wscale: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read_write> acc: array<i32>;

const TM: u32 = {{TM}}u;
const BM: u32 = 16u * TM;
const BN: u32 = 64u;
// weight words per step
const KW: u32 = 8u;
const M2: u32 = 0x03030303u;

// xs[j * BM + row]: int8x4 activation word j (of 4 * KW) of the step
var<workgroup> xs: array<u32, {{XS}}>;
// ws[k * BN + feature]: packed weight word k (of KW) of the step
var<workgroup> ws: array<u32, 512>;

// One output of the tile: finish (exact division) or keep the partial sum.
fn put(r: u32, o: u32, part: i32, scale: f32) {
    if (r >= p.nr || o >= p.no) {
        return;
    }
    let si = p.ss + r * 4u;
    let a = bitcast<f32>(st[si + 1u]);
    let sx = bitcast<i32>(st[si + 2u]);
    let yi = r * p.ys + o;
    var total = part;
    if (p.first == 0u) {
        total += acc[p.sa + yi];
    }
    if (p.last == 1u) {
        y[p.sy + yi] = fdiv(exact_i2f(total - sx) * scale, a);
    } else {
        acc[p.sa + yi] = total;
    }
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
) {
    let tx = t % 16u;
    let ty = t / 16u;
    let o0 = wg.x * BN;
    let r0 = wg.y * BM;
    // the TM x 4 accumulators are named registers (generated: an indexed
    // private array would live in slow local memory on some GPUs)
{{DECL}}    for (var k0 = 0u; k0 < p.nk; k0 += KW) {
        // activations: BM rows x 8 vec4 (one per weight word), TM / 2 per thread
        for (var l = 0u; l < TM / 2u; l++) {
            let idx = t + 256u * l;
            let row = idx / 8u;
            let v = idx % 8u;
            var val = vec4<u32>(0u);
            if (r0 + row < p.nr && k0 + v < p.nk) {
                val = xq[p.sq + (r0 + row) * p.qs4 + k0 + v];
            }
            xs[(4u * v) * BM + row] = val.x;
            xs[(4u * v + 1u) * BM + row] = val.y;
            xs[(4u * v + 2u) * BM + row] = val.z;
            xs[(4u * v + 3u) * BM + row] = val.w;
        }
        // weights: 64 features x 2 vec4
        if (t < 128u) {
            let o = t / 2u;
            let h = t % 2u;
            var val = vec4<u32>(0x55555555u);
            if (o0 + o < p.no && k0 + 4u * h < p.nk) {
                val = w[p.sw + (o0 + o) * p.wpr4 + k0 / 4u + h];
            }
            ws[(4u * h) * BN + o] = val.x;
            ws[(4u * h + 1u) * BN + o] = val.y;
            ws[(4u * h + 2u) * BN + o] = val.z;
            ws[(4u * h + 3u) * BN + o] = val.w;
        }
        workgroupBarrier();
        for (var k = 0u; k < KW; k++) {
{{STEP}}        }
        workgroupBarrier();
    }
    let scale = wscale[p.sc];
{{STORE}}}
