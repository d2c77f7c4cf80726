"""Prometheus metrics under vLLM's names with a `gyges:` prefix, in a registry of the server's own.

Per-request latencies are observed by the server as tokens reach it, and each transformation when it
ends (the cluster calls back from its loop); the cluster's state (running, waiting, token counts, KV
usage, instances) is read from `cluster.stats()` at each scrape.
"""
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0, 160.0, 640.0)
TRANSFORM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    def __init__(self, cluster, model_name: str):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        kw = dict(labelnames=["model_name"], registry=self.registry)

        def hist(name, doc):
            return Histogram(f"gyges:{name}", doc, buckets=LATENCY_BUCKETS, **kw).labels(model_name)

        self.ttft = hist("time_to_first_token_seconds", "Time from arrival to the first token.")
        self.itl = hist("inter_token_latency_seconds", "Time between a request's consecutive token arrivals.")
        self.e2e = hist("e2e_request_latency_seconds", "Time from arrival to the last token.")
        self.queue = hist("request_queue_time_seconds", "Time from arrival at the cluster to its first step.")
        by_kind = dict(labelnames=["model_name", "kind"], registry=self.registry, buckets=TRANSFORM_BUCKETS)
        self.transform_duration = Histogram("gyges:transformation_duration_seconds",
                                            "Transformation time, start to resumed.", **by_kind)
        self.transform_stall = Histogram("gyges:transformation_stall_seconds",
                                         "Time the transformed instances made no tokens.", **by_kind)
        for kind in ("merge", "split"):  # both series exist from the start, at zero
            self.transform_duration.labels(model_name, kind)
            self.transform_stall.labels(model_name, kind)
        self.registry.register(_ClusterCollector(cluster, model_name))
        cluster.watch_transformations(self.transformed)

    def transformed(self, record):
        """A transformation ended (`gyges.cluster.transitions.TransformRecord`; from the cluster's loop)."""
        kind = record.report.kind
        self.transform_duration.labels(self.model_name, kind).observe(record.duration_s)
        self.transform_stall.labels(self.model_name, kind).observe(record.stall_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ClusterCollector:
    def __init__(self, cluster, model_name: str):
        self.cluster, self.model_name = cluster, model_name

    def collect(self):
        s, m = self.cluster.stats(), self.model_name
        for name, doc, value in (("num_requests_running", "Requests in a running batch.", s.running),
                                 ("num_requests_waiting", "Requests waiting to run (queued or held).", s.waiting)):
            g = GaugeMetricFamily(f"gyges:{name}", doc, labels=["model_name"])
            g.add_metric([m], value)
            yield g
        for name, doc, value in (("prompt_tokens", "Prompt tokens prefilled.", s.prompt_tokens),
                                 ("generation_tokens", "Tokens generated.", s.generation_tokens),
                                 ("home_layout_changes", "Times the planner changed the home layout.", s.home_changes)):
            c = CounterMetricFamily(f"gyges:{name}", doc, labels=["model_name"])
            c.add_metric([m], value)
            yield c
        kv = GaugeMetricFamily("gyges:kv_cache_usage_perc", "Fraction of a device's KV pages in use (0-1).",
                               labels=["model_name", "device"])
        for device, usage in sorted(s.kv_usage.items()):
            kv.add_metric([m, str(device)], usage)
        yield kv
        inst = GaugeMetricFamily("gyges:instances", "Instances by tensor-parallel degree.", labels=["model_name", "tp"])
        for tp, count in sorted(s.instances_by_tp.items()):
            inst.add_metric([m, str(tp)], count)
        yield inst
