//! Sequence packing for training: a micro-batch's examples laid into as few rows as fit, so the
//! forward and backward passes compute real tokens instead of right-padding. Each example keeps
//! its own positions (restarting at 0 in its row) and sees only itself through a
//! block-diagonal causal mask (see `Pass::Packed`), so it computes what it computes alone.

use candle_core::{Device, Tensor};

/// Where each example of a micro-batch lies: `place[i]` = (row, offset) of example `i`, in rows
/// of `width` tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packing {
    pub rows: usize,
    pub width: usize,
    pub place: Vec<(usize, usize)>,
}

impl Packing {
    /// Right-padding: one row per example, each as wide as the longest.
    pub fn padded(lengths: &[usize]) -> Packing {
        let width = lengths.iter().copied().max().unwrap_or(0);
        Packing { rows: lengths.len(), width, place: (0..lengths.len()).map(|i| (i, 0)).collect() }
    }

    /// First-fit decreasing into rows as wide as the longest example: never more tokens than
    /// padding computes, usually fewer rows. Ties keep the batch order (deterministic).
    pub fn first_fit(lengths: &[usize]) -> Packing {
        let width = lengths.iter().copied().max().unwrap_or(0);
        let mut by_len: Vec<usize> = (0..lengths.len()).collect();
        by_len.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let mut used: Vec<usize> = Vec::new();
        let mut place = vec![(0, 0); lengths.len()];
        for i in by_len {
            let row = match used.iter().position(|&u| u + lengths[i] <= width) {
                Some(r) => r,
                None => {
                    used.push(0);
                    used.len() - 1
                }
            };
            place[i] = (row, used[row]);
            used[row] += lengths[i];
        }
        Packing { rows: used.len(), width, place }
    }

    /// Tokens the forward pass computes (rows × width, padding included).
    pub fn computed_tokens(&self) -> usize {
        self.rows * self.width
    }

    /// The token ids (rows × width, 0 where nothing lies) of `examples` laid out.
    pub fn ids(&self, examples: &[&[u32]]) -> Vec<u32> {
        let mut ids = vec![0u32; self.rows * self.width];
        for (e, &(r, o)) in examples.iter().zip(&self.place) {
            let at = r * self.width + o;
            ids[at..at + e.len()].copy_from_slice(e);
        }
        ids
    }

    /// The spans (offset, length) of each row, in offset order: the examples, then the row's
    /// unused tail as one span of its own (so every query has a key and softmax stays finite).
    fn spans(&self, lengths: &[usize]) -> Vec<Vec<(usize, usize)>> {
        let mut spans = vec![Vec::new(); self.rows];
        for (&(r, o), &n) in self.place.iter().zip(lengths) {
            spans[r].push((o, n));
        }
        for s in spans.iter_mut() {
            s.sort_unstable();
            let end = s.last().map(|&(o, n)| o + n).unwrap_or(0);
            if end < self.width {
                s.push((end, self.width - end));
            }
        }
        spans
    }

    /// Each token's position in its own sequence (rows, width) and the block-diagonal causal
    /// additive mask (rows, 1, width, width): 0 where a token may look, -1e9 elsewhere.
    pub fn positions_and_mask(&self, lengths: &[usize], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let w = self.width;
        let mut pos = vec![0u32; self.rows * w];
        let mut mask = vec![-1e9f32; self.rows * w * w];
        for (r, spans) in self.spans(lengths).into_iter().enumerate() {
            for (o, n) in spans {
                for i in 0..n {
                    pos[r * w + o + i] = i as u32;
                    let q = (r * w + o + i) * w;
                    mask[q + o..q + o + i + 1].fill(0.0);
                }
            }
        }
        Ok((Tensor::from_vec(pos, (self.rows, w), device)?, Tensor::from_vec(mask, (self.rows, 1, w, w), device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_packs_without_overlap_or_growth() {
        let lens = [10, 3, 4, 6, 2, 9, 1];
        let p = Packing::first_fit(&lens);
        assert_eq!(p.width, 10);
        // 35 tokens in rows of 10: 4 rows (10 | 9+1 | 6+4 | 3+2), not 7.
        assert_eq!(p.rows, 4);
        assert!(p.computed_tokens() <= Packing::padded(&lens).computed_tokens());
        let mut cover = vec![0u8; p.rows * p.width];
        for (&(r, o), &n) in p.place.iter().zip(&lens) {
            assert!(o + n <= p.width);
            cover[r * p.width + o..r * p.width + o + n].iter_mut().for_each(|c| *c += 1);
        }
        assert!(cover.iter().all(|&c| c <= 1), "examples overlap");
        let (pos, mask) = p.positions_and_mask(&lens, &Device::Cpu).unwrap();
        let pos: Vec<Vec<u32>> = pos.to_vec2().unwrap();
        let mask: Vec<Vec<Vec<f32>>> = mask.squeeze(1).unwrap().to_vec3().unwrap();
        // Row 1 holds the 9 then the 1: positions restart, and each sees only itself, causally.
        assert_eq!(pos[1], vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 0]);
        let sees = |r: usize, q: usize| -> Vec<usize> { (0..10).filter(|&k| mask[r][q][k] == 0.0).collect() };
        assert_eq!(sees(1, 5), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(sees(1, 9), vec![9]);
        // Row 3 holds 3 + 2 and an unused tail of 5, which sees only itself.
        assert_eq!(pos[3], vec![0, 1, 2, 0, 1, 0, 1, 2, 3, 4]);
        assert_eq!(sees(3, 4), vec![3, 4]);
        assert_eq!(sees(3, 7), vec![5, 6, 7]);
        assert!(Packing::first_fit(&[]).rows == 0);
    }
}
