//! The etcd source against a real etcd, started by the tests.

mod common;

use common::Etcd;

#[test]
fn harness_restarts_etcd_with_its_data() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut etcd = Etcd::start();
    rt.block_on(async {
        let mut c = etcd.client().await;
        c.put("k", "v1", None).await.unwrap();
    });
    etcd.kill();
    etcd.restart();
    rt.block_on(async {
        let mut c = etcd.client().await;
        let resp = c.get("k", None).await.unwrap();
        assert_eq!(resp.kvs()[0].value(), b"v1", "the data dir survives a restart");
    });
}
