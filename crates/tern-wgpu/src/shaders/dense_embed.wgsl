// Embedding gather and deterministic scatter-add over 2-D windows: a block of
// rows (ids/y/dy) and columns [c0, c0 + cols), against the table rows
// [v0, v0 + vw) bound in this pass (ids outside it are left to other passes).
//   GATHER: y[r] = table[ids[r]] (one thread per element).
//   LINKS: for each row of the block, the next row with the same id (or
//     NONE) and whether an earlier row has it.
//   SCATTER: the first row of each id walks its chain in row order:
//     dtable[id] = ((dtable[id] + dy[r0]) + dy[r1]) + ... (the CPU's order).
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

const NONE: u32 = 0xffffffffu;

#ifdef GATHER
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#endif
#ifdef LINKS
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> links: array<u32>;
var<workgroup> nx: array<atomic<u32>, 32>;
var<workgroup> dp: array<atomic<u32>, 32>;
#endif
#ifdef SCATTER
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> links: array<u32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dt: array<f32>;
#endif

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = wg.y * nwg.x + wg.x;
#ifdef GATHER
    let e = g * 256u + t;
    if (e >= p.rows * p.cols) {
        return;
    }
    let r = e / p.cols;
    let col = e % p.cols;
    let id = ids[p.si + r];
    if (id >= p.v0 && id - p.v0 < p.vw) {
        y[p.sy + r * p.ld + col] = table[p.st + (id - p.v0) * p.ld + col];
    }
#endif
#ifdef LINKS
    if (g >= p.groups) {
        return;
    }
    // 32 rows per workgroup, each scanned by 8 threads over eighths of the
    // block; the earliest later match and "any earlier match" are combined
    // with integer atomics (order-independent results).
    let lr = t % 32u;
    let part = t / 32u;
    let r = g * 32u + lr;
    if (part == 0u) {
        atomicStore(&nx[lr], NONE);
        atomicStore(&dp[lr], 0u);
    }
    workgroupBarrier();
    if (r < p.rows) {
        let id = ids[p.si + r];
        let chunk = (p.rows + 7u) / 8u;
        let q0 = part * chunk;
        let q1 = min(p.rows, q0 + chunk);
        var nxt = NONE;
        var dup = 0u;
        for (var q = q0; q < q1; q++) {
            if (ids[p.si + q] == id) {
                if (q < r) {
                    dup = 1u;
                } else if (q > r) {
                    nxt = min(nxt, q);
                }
            }
        }
        if (nxt != NONE) {
            atomicMin(&nx[lr], nxt);
        }
        if (dup != 0u) {
            atomicOr(&dp[lr], 1u);
        }
    }
    workgroupBarrier();
    if (part == 0u && r < p.rows) {
        links[p.sl + 2u * r] = atomicLoad(&nx[lr]);
        links[p.sl + 2u * r + 1u] = atomicLoad(&dp[lr]);
    }
#endif
#ifdef SCATTER
    if (g >= p.groups) {
        return;
    }
    let ncg = (p.cols + 255u) / 256u;
    let r = g / ncg;
    let col = (g % ncg) * 256u + t;
    if (col >= p.cols || links[p.sl + 2u * r + 1u] != 0u) {
        return;
    }
    let id = ids[p.si + r];
    if (id < p.v0 || id - p.v0 >= p.vw) {
        return;
    }
    let di = p.st + (id - p.v0) * p.ld + col;
    var v = dt[di];
    var q = r;
    loop {
        v = v + dy[p.sy + q * p.ld + col];
        q = links[p.sl + 2u * q];
        if (q == NONE) {
            break;
        }
    }
    dt[di] = v;
#endif
}
