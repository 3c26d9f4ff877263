"""What the tests stand on: real servers on 127.0.0.1, a PKI, faults, and the files the tests feed the CLI.

    processes.py  ports on 127.0.0.1, server children that die with the test run, tmpfs scratch directories
    pki.py        the TLS test PKI (a CA, server and client certificates, a CA that signed nothing)
    http.py       the threaded HTTP(S) server every test server is built on, with counters
    faults.py     faults scripted per request, and the reverse proxy that puts them in front of any server
    objects.py    the object server (https:// sources, the HTTPS key server, the Confidential Data Hub)
    vault.py      Vault's KV v2, Kubernetes auth and transit APIs
    moto.py       moto in server mode (S3, KMS, Secrets Manager) and the tests' AWS environment
    s3rver.py     s3rver, the S3 server fast enough for models of real size
    registry.py   Debian's docker-registry, its token issuer, blob storage and header proxy
    fixtures.py   the pytest fixtures (registered by tests/conftest.py) and fast(), the tests' connection
    models.py     make_model: the one model directory of the tests and benchmarks
    archives.py   tar and zip builders for the unpacker's tests, hostile ones included
    signing.py    model signing: EC keys, a signing PKI, the model_signing CLI as the oracle
    tinkkeys.py   Tink keysets around raw keys, so tink-py can act as an oracle
    cgroups.py    fake /proc and cgroup trees (v1 and v2), and real cgroups where root allows
    injection.py  workloads of every kind to inject into, and kubernetes-validate --strict on the results
"""
