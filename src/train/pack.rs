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

    /// Rows of at most `cap` tokens (or the longest example, if longer), as few as hold the
    /// examples, filled evenly: longest first, each into the least-filled row with room (a new
    /// row when none has). The width is the fullest row's fill, so a micro-batch whose tokens
    /// fit in one row computes no padding at all; never more tokens than padding computes
    /// (padding is returned when it would be as good). Ties keep the batch order (deterministic).
    pub fn pack(lengths: &[usize], cap: usize) -> Packing {
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let cap = cap.max(longest);
        let total: usize = lengths.iter().sum();
        let mut by_len: Vec<usize> = (0..lengths.len()).collect();
        by_len.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let mut used: Vec<usize> = vec![0; if total == 0 { 0 } else { total.div_ceil(cap.max(1)) }];
        let mut place = vec![(0, 0); lengths.len()];
        for i in by_len {
            let least = (0..used.len()).min_by_key(|&r| (used[r], r));
            let row = match least {
                Some(r) if used[r] + lengths[i] <= cap => r,
                _ => {
                    used.push(0);
                    used.len() - 1
                }
            };
            place[i] = (row, used[row]);
            used[row] += lengths[i];
        }
        let packed = Packing { rows: used.len(), width: used.iter().copied().max().unwrap_or(0), place };
        let padded = Packing::padded(lengths);
        if packed.computed_tokens() < padded.computed_tokens() {
            packed
        } else {
            padded
        }
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
    fn packs_evenly_without_overlap_or_growth() {
        let lens = [10, 3, 4, 6, 2, 9, 1];
        // 35 tokens in rows of at most 12: 3 rows filled evenly (10+2 | 9+3 | 6+4+1), width 12.
        let p = Packing::pack(&lens, 12);
        assert_eq!((p.rows, p.width), (3, 12));
        assert!(p.computed_tokens() <= Packing::padded(&lens).computed_tokens());
        let mut cover = vec![0u8; p.rows * p.width];
        for (&(r, o), &n) in p.place.iter().zip(&lens) {
            assert!(o + n <= p.width);
            cover[r * p.width + o..r * p.width + o + n].iter_mut().for_each(|c| *c += 1);
        }
        assert!(cover.iter().all(|&c| c <= 1), "examples overlap");
        // Everything fits in one row: no padding at all.
        let one = Packing::pack(&lens, 64);
        assert_eq!((one.rows, one.width), (1, 35));
        // A cap below the longest example is raised to it; nothing to gain returns padding.
        assert_eq!(Packing::pack(&[10, 10], 4), Packing::padded(&[10, 10]));
        let (pos, mask) = p.positions_and_mask(&lens, &Device::Cpu).unwrap();
        let pos: Vec<Vec<u32>> = pos.to_vec2().unwrap();
        let mask: Vec<Vec<Vec<f32>>> = mask.squeeze(1).unwrap().to_vec3().unwrap();
        // Row 1 holds the 9 then the 3: positions restart, and each sees only itself, causally.
        assert_eq!(pos[1], vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2]);
        let sees = |r: usize, q: usize| -> Vec<usize> { (0..12).filter(|&k| mask[r][q][k] == 0.0).collect() };
        assert_eq!(sees(1, 5), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(sees(1, 10), vec![9, 10]);
        // Row 2 holds 6 + 4 + 1 and an unused tail of 1, which sees only itself.
        assert_eq!(pos[2], vec![0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 0]);
        assert_eq!(sees(2, 11), vec![11]);
        assert!(Packing::pack(&[], 12).rows == 0);
    }
}
