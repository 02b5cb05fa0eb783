"""The benchmark harness: `python scripts/bench.py --workload NAME` runs one workload and prints
one JSON object; `--help` documents every parameter, every output field and the targets.

Nothing here is a test and nothing here ships in the wheel: the numbers are reported, never
asserted (docs/PERFORMANCE.md holds the measured ones). tests/integration/test_bench.py runs
every workload at a small size to keep them working.

    options.py     the command line, the shared options, the `Workload` entry type
    workloads.py   the table of workloads
    engine_run.py  noop, sleep, llm, fanout, long: the real engine in-process, and its report
    floor.py       floor: the same steps and slots without a database, and ours over it
    ceiling.py     ceiling: the engine's transactions without the engine
    measure.py     percentiles, rank correlation, memory, CPU, calibration, the machine
    main.py        run one workload (optionally profiled) and print its report
"""
