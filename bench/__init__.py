"""vidcore benchmarks, installed as `vidcore.bench`: named shapes, one bench_<op>.py per op
(pytest-benchmark tests + the cases the `vidcore bench` runner times), timing and reporting."""
