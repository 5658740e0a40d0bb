//! GPU time of every dispatch of a forward step, from timestamps written at the start and end
//! of each compute pass (`puyu bench --profile`; in the browser the `kernels.profile` load
//! option and `engine.info().profile`). Only on devices with timestamp-query, and only when
//! asked for: the writes cost a little, and Chromium rounds them to 100 µs unless its WebGPU
//! developer features are on.

use serde::Serialize;

use crate::error::Result;

use super::Gpu;

/// One kind of dispatch in a step: every layer's `wqkv` product adds to one row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileRow {
    pub name: &'static str,
    pub dispatches: usize,
    pub ms: f64,
}

/// The GPU time of `steps` steps of one kind, `tokens` tokens in all, by kind of dispatch in
/// the order each kind first runs: totals (divide by `steps` for one step's).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StepProfile {
    pub steps: usize,
    pub tokens: usize,
    /// From the start of each step's first pass to the end of its last (gaps between passes
    /// included), summed.
    pub wall_ms: f64,
    pub rows: Vec<ProfileRow>,
}

impl StepProfile {
    /// Adds another step's (or steps') times.
    pub fn add(&mut self, other: StepProfile) {
        self.steps += other.steps;
        self.tokens += other.tokens;
        self.wall_ms += other.wall_ms;
        for row in other.rows {
            match self.rows.iter_mut().find(|r| r.name == row.name) {
                Some(r) => {
                    r.dispatches += row.dispatches;
                    r.ms += row.ms;
                }
                None => self.rows.push(row),
            }
        }
    }
}

/// Prompt steps (several tokens) and decode steps (one token) since the model was made or
/// its cache last emptied (`GpuModel::reset`), each kind summed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Profile {
    pub prefill: Option<StepProfile>,
    pub decode: Option<StepProfile>,
}

/// Timestamp queries for the passes of one step, and their readback.
pub(crate) struct Profiler {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// Passes the query set has room for (two timestamps each).
    capacity: usize,
    /// Names of the latest step's passes, in order.
    names: Vec<&'static str>,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
}

impl Profiler {
    /// Room for `passes` passes a step; `None` when the device was opened without timestamps.
    pub fn new(gpu: &Gpu, passes: usize) -> Option<Profiler> {
        if !gpu.timestamps {
            return None;
        }
        // A query set holds at most 4096 queries (wgpu's limit); later passes go untimed.
        let capacity = passes.min(2048);
        let count = 2 * capacity as u32;
        let dev = &gpu.device;
        let buffer = |label, usage| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 8 * count as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(Profiler {
            set: dev.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolve: buffer(
                "timestamps",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            staging: buffer(
                "timestamps readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            capacity,
            names: Vec::new(),
            period_ns: gpu.queue.get_timestamp_period() as f64,
        })
    }

    /// A new step begins.
    pub fn begin(&mut self) {
        self.names.clear();
    }

    /// The timestamp writes of the next pass, `name` (none once the set is full).
    pub fn pass(&mut self, name: &'static str) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let k = self.names.len();
        if k == self.capacity {
            return None;
        }
        self.names.push(name);
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(2 * k as u32),
            end_of_pass_write_index: Some(2 * k as u32 + 1),
        })
    }

    /// Resolves the step's timestamps into the readback buffer (after its last pass).
    pub fn finish(&self, enc: &mut wgpu::CommandEncoder) {
        let n = 2 * self.names.len() as u32;
        if n > 0 {
            enc.resolve_query_set(&self.set, 0..n, &self.resolve, 0);
            enc.copy_buffer_to_buffer(&self.resolve, 0, &self.staging, 0, 8 * n as u64);
        }
    }

    /// The submitted step's times, summed by pass name.
    pub async fn read(&self, gpu: &Gpu, tokens: usize) -> Result<StepProfile> {
        let n = self.names.len();
        if n == 0 {
            return Ok(StepProfile {
                steps: 1,
                tokens,
                ..Default::default()
            });
        }
        let ticks: Vec<u64> = gpu.read_mapped_as(&self.staging, 16 * n as u64).await?;
        Ok(summarise(&self.names, &ticks, self.period_ns, tokens))
    }
}

/// Sums pass times (`ticks`: start and end of each pass) by name.
fn summarise(names: &[&'static str], ticks: &[u64], period_ns: f64, tokens: usize) -> StepProfile {
    let ms = |t: u64| t as f64 * period_ns / 1e6;
    let mut rows: Vec<ProfileRow> = Vec::new();
    for (k, &name) in names.iter().enumerate() {
        // Some drivers' clocks are not monotonic across passes; a negative span counts 0.
        let t = ms(ticks[2 * k + 1].saturating_sub(ticks[2 * k]));
        match rows.iter_mut().find(|r| r.name == name) {
            Some(r) => {
                r.dispatches += 1;
                r.ms += t;
            }
            None => rows.push(ProfileRow {
                name,
                dispatches: 1,
                ms: t,
            }),
        }
    }
    let wall_ms = ms(ticks[2 * names.len() - 1].saturating_sub(ticks[0]));
    StepProfile {
        steps: 1,
        tokens,
        wall_ms,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_sum_by_name_in_first_run_order() {
        let names = ["norm", "wqkv", "norm", "wqkv", "output"];
        // 2 ns a tick: spans of 10, 20, 30, 40, 50 ticks; 1000 ticks start to end.
        let ticks = [0, 10, 100, 120, 200, 230, 300, 340, 950, 1000];
        let p = summarise(&names, &ticks, 2.0, 1);
        let got: Vec<(&str, usize, f64)> = p
            .rows
            .iter()
            .map(|r| (r.name, r.dispatches, r.ms * 1e6 / 2.0))
            .collect();
        let want = [("norm", 2, 40.0), ("wqkv", 2, 60.0), ("output", 1, 50.0)];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            // Sums of f64 tick conversions: equal to rounding.
            assert!(
                g.0 == w.0 && g.1 == w.1 && (g.2 - w.2).abs() < 1e-9,
                "{g:?} vs {w:?}"
            );
        }
        assert!((p.wall_ms - 1000.0 * 2.0 / 1e6).abs() < 1e-15);
        // Steps add up by name; new kinds go last.
        let mut sum = p.clone();
        sum.add(summarise(&["wqkv", "sample"], &[0, 5, 10, 30], 2.0, 1));
        let got: Vec<(&str, usize, f64)> = sum.rows.iter().map(|r| (r.name, r.dispatches, r.ms * 1e6 / 2.0)).collect();
        let want = [("norm", 2, 40.0), ("wqkv", 3, 65.0), ("output", 1, 50.0), ("sample", 1, 20.0)];
        for (g, w) in got.iter().zip(want) {
            assert!(g.0 == w.0 && g.1 == w.1 && (g.2 - w.2).abs() < 1e-9, "{g:?} vs {w:?}");
        }
        assert_eq!((got.len(), sum.steps, sum.tokens), (4, 2, 2));
        // A clock that runs backwards over a pass counts zero, not a wrapped huge span.
        let p = summarise(&["a"], &[50, 40], 1.0, 1);
        assert_eq!(p.rows[0].ms, 0.0);
    }
}
