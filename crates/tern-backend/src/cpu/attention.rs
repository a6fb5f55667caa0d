//! Causal grouped-query attention on the CPU (see [`crate::AttnDims`]).

use rayon::prelude::*;

use crate::AttnDims;

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

pub(crate) fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
    d: AttnDims,
) {
    d.check("cpu", q.len(), k.len(), v.len(), out.len(), lse.len());
    let AttnDims {
        batch,
        n_new,
        n_past,
        kv_len,
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = d;
    if batch * n_new * n_heads == 0 {
        return;
    }
    if hd == 0 {
        // Every score is 0: the log-sum-exp is ln(number of keys).
        for b in 0..batch {
            for h in 0..n_heads {
                for t in 0..n_new {
                    lse[(b * n_heads + h) * n_new + t] = ((n_past + t + 1) as f32).ln();
                }
            }
        }
        return;
    }
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let row = n_heads * hd;
    let mut lse_rows = vec![0f32; batch * n_new * n_heads];
    out.par_chunks_mut(row)
        .zip(lse_rows.par_chunks_mut(n_heads))
        .enumerate()
        .for_each(|(bt, (o, l))| {
            let (b, t) = (bt / n_new, bt % n_new);
            let n_keys = n_past + t + 1;
            let mut s = vec![0f32; n_keys];
            for h in 0..n_heads {
                let kvh = h / group;
                let qh = &q[bt * row + h * hd..bt * row + (h + 1) * hd];
                let kv_at = |j: usize| ((b * kv_len + j) * n_kv_heads + kvh) * hd;
                let mut m = f32::NEG_INFINITY;
                for (j, sj) in s.iter_mut().enumerate() {
                    *sj = dot(qh, &k[kv_at(j)..kv_at(j) + hd]) * scale;
                    m = m.max(*sj);
                }
                let oh = &mut o[h * hd..(h + 1) * hd];
                oh.fill(0.0);
                let mut sum = 0f32;
                for (j, sj) in s.iter_mut().enumerate() {
                    let p = (*sj - m).exp();
                    sum += p;
                    for (o, &vv) in oh.iter_mut().zip(&v[kv_at(j)..kv_at(j) + hd]) {
                        *o += p * vv;
                    }
                }
                let inv = 1.0 / sum;
                for o in oh.iter_mut() {
                    *o *= inv;
                }
                l[h] = m + sum.ln();
            }
        });
    for b in 0..batch {
        for t in 0..n_new {
            for h in 0..n_heads {
                lse[(b * n_heads + h) * n_new + t] = lse_rows[(b * n_new + t) * n_heads + h];
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    d: AttnDims,
) {
    d.check_backward(
        "cpu",
        [q.len(), k.len(), v.len(), out.len(), lse.len()],
        dout.len(),
        dq.len(),
        dk.len(),
        dv.len(),
    );
    let AttnDims {
        batch,
        n_new: tn,
        n_heads,
        n_kv_heads,
        head_dim: hd,
        ..
    } = d;
    let group = n_heads / n_kv_heads;
    let scale = if hd == 0 {
        0.0
    } else {
        1.0 / (hd as f32).sqrt()
    };
    let q_at = |b: usize, t: usize, h: usize| ((b * tn + t) * n_heads + h) * hd;
    let kv_at = |b: usize, j: usize, kvh: usize| ((b * tn + j) * n_kv_heads + kvh) * hd;
    // One task per (batch, kv head): it owns dk and dv of that head and dq of
    // the query heads of its group, gathered locally and scattered after.
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..batch * n_kv_heads)
        .into_par_iter()
        .map(|bk| {
            let (b, kvh) = (bk / n_kv_heads, bk % n_kv_heads);
            let mut ldq = vec![0f32; group * tn * hd];
            let mut ldk = vec![0f32; tn * hd];
            let mut ldv = vec![0f32; tn * hd];
            let mut ds = vec![0f32; tn];
            for g in 0..group {
                let h = kvh * group + g;
                for t in 0..tn {
                    let qo = q_at(b, t, h);
                    let (qt, ot, dot_t) = (&q[qo..qo + hd], &out[qo..qo + hd], &dout[qo..qo + hd]);
                    let l = lse[(b * n_heads + h) * tn + t];
                    let dd = dot(dot_t, ot);
                    for j in 0..=t {
                        let ko = kv_at(b, j, kvh);
                        let p = (dot(qt, &k[ko..ko + hd]) * scale - l).exp();
                        for (a, &g) in ldv[j * hd..(j + 1) * hd].iter_mut().zip(dot_t) {
                            *a += p * g;
                        }
                        let dp = dot(dot_t, &v[ko..ko + hd]);
                        ds[j] = p * (dp - dd) * scale;
                    }
                    let dqt = &mut ldq[(g * tn + t) * hd..(g * tn + t + 1) * hd];
                    for j in 0..=t {
                        let ko = kv_at(b, j, kvh);
                        let s = ds[j];
                        for (a, &kk) in dqt.iter_mut().zip(&k[ko..ko + hd]) {
                            *a += s * kk;
                        }
                        for (a, &qq) in ldk[j * hd..(j + 1) * hd].iter_mut().zip(qt) {
                            *a += s * qq;
                        }
                    }
                }
            }
            (ldq, ldk, ldv)
        })
        .collect();
    for (bk, (ldq, ldk, ldv)) in parts.into_iter().enumerate() {
        let (b, kvh) = (bk / n_kv_heads, bk % n_kv_heads);
        for j in 0..tn {
            let ko = kv_at(b, j, kvh);
            dk[ko..ko + hd].copy_from_slice(&ldk[j * hd..(j + 1) * hd]);
            dv[ko..ko + hd].copy_from_slice(&ldv[j * hd..(j + 1) * hd]);
        }
        for g in 0..group {
            let h = kvh * group + g;
            for t in 0..tn {
                let qo = q_at(b, t, h);
                dq[qo..qo + hd].copy_from_slice(&ldq[(g * tn + t) * hd..(g * tn + t + 1) * hd]);
            }
        }
    }
}
