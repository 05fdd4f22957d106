"""``personavec serve``: an OpenAI-compatible chat server that measures every answer's persona, steers and
guards on request, and exports the telemetry (Prometheus metrics, an audit log).

- `config`: what the server is told (`ServeConfig`, `Limits`, `Calibration`);
- `protocol`: the wire format (OpenAI's, plus the ``persona`` fields);
- `rows`: per-row reading, steering and guarding inside one batched ``generate``;
- `engine`: the in-process engine, batching concurrent requests;
- `thresholds`: thresholds calibrated on a reference set, cached;
- `telemetry`: metrics and the audit log;
- `state`: what the app serves, and the ``persona`` figures it reports;
- `http`: OpenAI-style errors, limits, auth;
- `local`: a request answered by the in-process engine;
- `app`: the HTTP app (`build_app`); `run`: the command (`serve`).

Needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client): ``pip install 'personavec[serve]'``.
"""
