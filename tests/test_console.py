"""The worker's console output: one line per progress event, Ray's INFO chatter muted."""

from __future__ import annotations

import logging

from raymh.train.worker import quiet_ray_logs, say


def test_quiet_ray_logs_mutes_ray_data_train_and_the_report_line():
    from ray.train.v2._internal.execution import context as train_context

    loggers = [logging.getLogger(n) for n in ("ray.data", "ray.data._internal.execution", "ray.train")]
    loggers.append(train_context.logger)  # "Reporting training result ..." with every metric
    assert any(lg.isEnabledFor(logging.INFO) for lg in loggers)  # Ray's defaults let them through
    touched = [logging.getLogger(n) for n in ("ray.data", "ray.train")] + [train_context.logger]
    levels = [lg.level for lg in touched]
    try:
        quiet_ray_logs()
        assert not any(lg.isEnabledFor(logging.INFO) for lg in loggers)
        assert all(lg.isEnabledFor(logging.WARNING) for lg in loggers)
    finally:  # the rest of the session keeps Ray's levels
        for lg, level in zip(touched, levels, strict=True):
            lg.setLevel(level)


def test_say_writes_one_line_to_the_real_stdout(capfd):
    say("step 3/10")
    assert capfd.readouterr().out == "[raymh] step 3/10\n"
