// Float products with the packed ternary weights (no activation
// quantization), tiled 64 x 64 per workgroup (16 x 16 threads, 4 x 4 outputs
// each at rows ty + 16i and columns tx + 16j), 16 reduction steps per tile
// load. The codes are decoded once per tile into workgroup memory as f32
// (4 KiB) next to the float operand (4 KiB).
// - FWD: y[r, o] = w_scale * Σ_c x[r, c] * code[o, c] (reduction over the
//   columns of W, one packed word = 16 columns per step).
// - BWD: dx[r, c] = w_scale * Σ_o dy[r, o] * code[o, c] (reduction over the
//   rows of W: the transposed product, 16 features per step; the tile of W is
//   16 rows x 4 words).
// Each step's 16 products are summed apart and then added to the total (a
// two-level sum keeps the f32 error near sqrt(n) ulps for long reductions).
// Chunks: with `first` the result is written, otherwise added to the output.
//
// Packed layout: word k of a weight row holds columns 16k..16k+15, column
// 16k + 4t + i in bits 8i + 2t as u = code + 1.
//#include ternary_float_params
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> wscale: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

// at[k * BM + row], bs[k * BN + col]
var<workgroup> at: array<f32, 1024>;
// decoded codes (-1, 0, 1): exact in f16, used where the adapter offers it
var<workgroup> bs: array<{{CT}}, 1024>;

fn code(word: u32, j: u32) -> f32 {
    // column j (0..16) of a packed word
    return f32((word >> (8u * (j % 4u) + 2u * (j / 4u))) & 3u) - 1.0;
}

fn put(r: u32, n: u32, v: f32) {
    if (r >= p.nr || n >= p.nn) {
        return;
    }
    let idx = p.so + r * p.os + n;
    if (p.first == 1u) {
        o[idx] = v;
    } else {
        o[idx] = o[idx] + v;
    }
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
) {
    let tx = t % 16u;
    let ty = t / 16u;
    let n0 = wg.x * BN;
    let r0 = wg.y * BM;
{{DECL}}    // loader coordinates: 64 rows x 16 reduction indices, 4 per thread
    let lrow = t / 4u;
    let lk = (t % 4u) * 4u;
    for (var k0 = 0u; k0 < p.nk; k0 += BK) {
        for (var q = 0u; q < 4u; q++) {
            let k = k0 + lk + q;
            var v = 0.0;
            if (r0 + lrow < p.nr && k < p.nk) {
                v = a[p.sa + (r0 + lrow) * p.astride + k];
            }
            at[(lk + q) * BM + lrow] = v;
        }
#ifdef FWD
        // 64 features x one word (16 columns): thread = (feature, t4)
        {
            let f = t / 4u;
            let t4 = t % 4u;
            var word = 0x55555555u;
            if (n0 + f < p.nn) {
                word = w[p.sw + (n0 + f) * p.wpr + k0 / 16u];
            }
            for (var i = 0u; i < 4u; i++) {
                let j = 4u * t4 + i;
                bs[j * BN + f] = {{CT}}(code(word, j));
            }
        }
#endif
#ifdef BWD
        // 16 features x 64 columns (4 words): thread = (feature, group of 4 columns)
        {
            let f = t / 16u;
            let g = t % 16u;
            var word = 0x55555555u;
            if (k0 + f < p.nk && n0 + 4u * g < p.nn) {
                word = w[p.sw + (k0 + f) * p.wpr + n0 / 16u + g / 4u];
            }
            for (var i = 0u; i < 4u; i++) {
                let j = 4u * (g % 4u) + i;
                bs[f * BN + 4u * g + i] = {{CT}}(code(word, j));
            }
        }
#endif
        workgroupBarrier();
{{STEP}}        workgroupBarrier();
    }
    let scale = wscale[p.sc];
{{STORE}}}
