BEGIN TRANSACTION;
CREATE TABLE addresses (
    pool_id TEXT NOT NULL, address TEXT NOT NULL, owner TEXT NOT NULL, host_id TEXT NOT NULL,
    PRIMARY KEY (pool_id, address), UNIQUE (pool_id, owner));
INSERT INTO "addresses" VALUES('10.40.0.0/24','10.40.0.1','gateway','h1');
INSERT INTO "addresses" VALUES('10.40.0.0/24','10.40.0.2','02:00:00:00:00:01','h1');
INSERT INTO "addresses" VALUES('10.41.0.0/24','10.41.0.128','02:00:00:00:00:02','h2');
CREATE TABLE bindings (
    host_id TEXT NOT NULL, docker_network_id TEXT NOT NULL, network_id TEXT NOT NULL,
    PRIMARY KEY (host_id, docker_network_id));
INSERT INTO "bindings" VALUES('h1','dockA','dockA');
INSERT INTO "bindings" VALUES('h2','dockL','dockL');
CREATE TABLE endpoints (
    endpoint_id TEXT PRIMARY KEY, network_id TEXT NOT NULL, host_id TEXT NOT NULL, record TEXT NOT NULL);
INSERT INTO "endpoints" VALUES('e1aaaaaaaaaaaa','dockA','h1','{"v": 1, "endpoint_id": "e1aaaaaaaaaaaa", "network_id": "dockA", "host_id": "h1", "vtep": "192.0.2.1", "mac": "02:00:00:00:00:01", "address": "10.40.0.2/24", "container_name": "box1"}');
INSERT INTO "endpoints" VALUES('e2bbbbbbbbbbbb','dockL','h2','{"v": 1, "endpoint_id": "e2bbbbbbbbbbbb", "network_id": "dockL", "host_id": "h2", "vtep": "192.0.2.2", "mac": "02:00:00:00:00:02", "address": "10.41.0.128/24", "container_name": ""}');
CREATE TABLE events (
    revision INTEGER PRIMARY KEY, kind TEXT NOT NULL, action TEXT NOT NULL, key_id TEXT NOT NULL,
    record TEXT);
CREATE TABLE hosts (host_id TEXT PRIMARY KEY, record TEXT NOT NULL, expires REAL NOT NULL);
INSERT INTO "hosts" VALUES('h1','{"v": 1, "host_id": "h1", "address": "192.0.2.1", "hostname": ""}',1.7960138075909307003e+09);
CREATE TABLE left_networks (
    host_id TEXT NOT NULL, network_id TEXT NOT NULL, PRIMARY KEY (host_id, network_id));
INSERT INTO "left_networks" VALUES('h1','dockL');
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO "meta" VALUES('revision',6);
INSERT INTO "meta" VALUES('compacted',0);
CREATE TABLE networks (
    network_id TEXT PRIMARY KEY, vni INTEGER NOT NULL UNIQUE, pool_id TEXT UNIQUE, record TEXT NOT NULL);
INSERT INTO "networks" VALUES('dockA',4096,'10.40.0.0/24','{"v": 1, "network_id": "dockA", "vni": 4096, "subnet": "10.40.0.0/24", "pool_id": "10.40.0.0/24", "gateway": "10.40.0.1", "ip_range": null, "name": "web", "mtu": null, "options": {}, "created_by": "h1"}');
INSERT INTO "networks" VALUES('dockL',4097,'10.41.0.0/24','{"v": 1, "network_id": "dockL", "vni": 4097, "subnet": "10.41.0.0/24", "pool_id": "10.41.0.0/24", "gateway": null, "ip_range": null, "name": "", "mtu": null, "options": {}, "created_by": "h2"}');
CREATE TABLE pools (pool_id TEXT PRIMARY KEY, record TEXT NOT NULL, cursor TEXT);
INSERT INTO "pools" VALUES('10.40.0.0/24','{"v": 1, "pool_id": "10.40.0.0/24", "subnet": "10.40.0.0/24", "ip_range": null, "holders": ["h1"]}','10.40.0.2');
INSERT INTO "pools" VALUES('10.41.0.0/24','{"v": 1, "pool_id": "10.41.0.0/24", "subnet": "10.41.0.0/24", "ip_range": "10.41.0.128/25", "holders": ["h1"]}','10.41.0.128');
CREATE INDEX endpoints_by_network ON endpoints (network_id);
COMMIT;