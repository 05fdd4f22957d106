"""``personavec serve``: an OpenAI-compatible chat server that measures every answer's persona, steers and
guards on request, and exports the telemetry (Prometheus metrics, an audit log).

- `config`: what the server is told (`ServeConfig`, `Limits`; thresholds by `ThresholdCalibration`,
  computed by `personavec.deploy.thresholds`);
- `protocol`: the wire format (OpenAI's, plus the ``persona`` fields);
- `rows`: a row's steering and guard as a backend request's edits, probes and guard;
- `engine`: the in-process engine, streaming concurrent requests through the backend;
- `telemetry`: metrics and the audit log;
- `state`: what the app serves, and the ``persona`` figures it reports;
- `http`: OpenAI-style errors, limits, auth;
- `local`: a request answered by the in-process engine;
- `app`: the HTTP app (`build_app`); `run`: the command (`serve`).

Needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client): ``pip install 'personavec[serve]'``.
"""
