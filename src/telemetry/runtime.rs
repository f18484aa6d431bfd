//! Gauges read from the tokio runtime at scrape time: `weft_runtime_alive_tasks`,
//! the tasks alive in the runtime that renders the metrics (the one that runs
//! weft). A count that keeps climbing while connections and requests come and
//! go is a task leak. `RuntimeMetrics::num_alive_tasks` is stable tokio API
//! (1.39+), no `tokio_unstable` needed. Rendered outside a runtime (a plain
//! unit test), the family is left out.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntGauge;

pub struct RuntimeCollector {
    alive_tasks: IntGauge,
}

impl RuntimeCollector {
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            alive_tasks: IntGauge::new(
                "weft_runtime_alive_tasks",
                "Tasks alive in weft's tokio runtime, sampled at scrape time.",
            )?,
        })
    }
}

impl Collector for RuntimeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.alive_tasks.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Vec::new();
        };
        let alive = i64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(i64::MAX);
        self.alive_tasks.set(alive);
        self.alive_tasks.collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::telemetry::metrics::Metrics;

    fn alive_tasks(metrics: &Metrics) -> Option<i64> {
        let text = String::from_utf8(metrics.render()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("weft_runtime_alive_tasks "))
            .map(|v| v.parse().unwrap())
    }

    #[tokio::test]
    async fn alive_tasks_follow_the_runtime_at_each_scrape() {
        let metrics = Metrics::new().unwrap();
        let before = alive_tasks(&metrics).unwrap();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = wait.await;
        });
        assert_eq!(alive_tasks(&metrics), Some(before + 1));
        release.send(()).unwrap();
        task.await.unwrap();
        assert_eq!(alive_tasks(&metrics), Some(before));
    }

    #[test]
    fn left_out_outside_a_runtime() {
        assert_eq!(alive_tasks(&Metrics::new().unwrap()), None);
    }
}
