import argparse

import pytest

from plugin import settings


def parse(argv, env):
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.load(parser.parse_args(argv), env)


def test_env_and_flags_mean_the_same_and_flags_win():
    s = parse([], {"ETCD_ENDPOINTS": "10.0.0.1:2379, http://10.0.0.2:2379", "VXLAN_PORT": "4790"})
    assert s.etcd_endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert s.vxlan_port == 4790 and not s.embedded
    s = parse(
        ["--vxlan-port", "5000", "--etcd-endpoints", ""], {"VXLAN_PORT": "4790", "ETCD_ENDPOINTS": "x:1"}
    )
    assert s.vxlan_port == 5000 and s.embedded


@pytest.mark.parametrize(
    "env",
    [
        {"VXLAN_PORT": "x"},
        {"VXLAN_PORT": "0"},
        {"DEFAULT_POOL": "10.0.0.0/33"},
        {"ADVERTISE_ADDR": "host"},
        {"DNS_ADDRESS": "ns.example"},
        {"DNS_UPSTREAMS": "10.0.0.1,resolver"},
        {"DEFAULT_POOL": "10.0.0.0/16", "DEFAULT_POOL_SIZE": "8"},
        {"HOST_TTL": "0"},
        {"ETCD_CERT": "/etc/pyoverlay/agent.pem"},
        {"WORKERS_THREADS": "0"},
        {"LOG_LEVEL": "chatty"},
        {"NEIGH_TABLE_SIZE": "100"},
        {"NEIGH_TABLE_SIZE": "many"},
    ],
)
def test_bad_settings_stop_with_a_message(env):
    with pytest.raises(SystemExit, match="pyoverlay: "):
        parse([], env)
