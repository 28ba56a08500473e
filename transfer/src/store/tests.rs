use super::*;
use crate::chunk::encode_chunk;
use crate::index::{Entry, SyncIndex, now_ms};
use std::collections::BTreeMap;

async fn local() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Arc::new(local::LocalDir::create(dir.path()).unwrap()))
        .await
        .unwrap();
    (dir, store)
}

fn index(vm: &str, entries: Vec<Entry>, nonce: Option<&str>) -> SyncIndex {
    let mut metadata = BTreeMap::new();
    if let Some(n) = nonce {
        metadata.insert(commit::COMMIT_NONCE.to_string(), n.to_string());
    }
    SyncIndex {
        sync_id: SyncId::new(now_ms()),
        parent: None,
        vm: vm.into(),
        disk: 0,
        chunk_size: 8192,
        disk_size: 8192 * entries.len() as u64,
        created_ms: now_ms(),
        raw_sha256: None,
        metadata,
        entries,
    }
}

async fn chunk(store: &Store, fill: u8) -> ChunkDigest {
    let (d, enc) = encode_chunk(&[fill; 8192]).unwrap();
    store.put_chunk(d, Bytes::from(enc)).await.unwrap();
    d
}

#[tokio::test]
async fn local_store_commits_only_complete_syncs() {
    let (dir, store) = local().await;
    let (d, enc) = encode_chunk(&[5u8; 8192]).unwrap();
    let idx = index("vm x", vec![Entry::Data(d), Entry::Zero], None);
    let e = store
        .commit_index(Bytes::from(idx.encode()))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::MissingChunks { .. }), "{e}");
    assert!(e.is_retryable());
    assert_eq!(store.has_chunks(vec![d]).await.unwrap(), vec![false]);
    store.put_chunk(d, Bytes::from(enc.clone())).await.unwrap();
    store.put_chunk(d, Bytes::from(enc)).await.unwrap();
    assert_eq!(store.has_chunks(vec![d]).await.unwrap(), vec![true]);
    let id = store.commit_index(Bytes::from(idx.encode())).await.unwrap();
    assert_eq!(store.list_syncs("vm x", 0).await.unwrap(), vec![id.clone()]);
    let back = SyncIndex::parse(&store.get_index("vm x", 0, &id).await.unwrap(), "t").unwrap();
    assert_eq!(back.sync_id, id, "the store's id is written into the index");
    assert_eq!(back.entries, idx.entries);
    // Without a nonce, the same index again is another sync, with a later id.
    let id2 = store.commit_index(Bytes::from(idx.encode())).await.unwrap();
    assert!(id2 > id);
    let v = store.verify().await.unwrap();
    assert!(
        v.is_clean() && v.chunks_ok == 1 && v.indexes_ok == 2,
        "{v:?}"
    );
    let g = store.gc().await.unwrap();
    assert_eq!((g.chunks_kept, g.chunks_deleted), (1, 0), "{g:?}");
    assert!(dir.path().join("syncs/vm%20x/0").is_dir());
}

#[tokio::test]
async fn sync_ids_are_assigned_by_the_store_and_increase() {
    let (_dir, store) = local().await;
    let d = chunk(&store, 1).await;
    let mut idx = index("v", vec![Entry::Data(d)], None);
    // The writer claims a far-future id: ignored.
    idx.sync_id = SyncId::parse("99991231T235959.999Z-ffffffff").unwrap();
    let a = store.commit_index(Bytes::from(idx.encode())).await.unwrap();
    assert!(
        a.unix_ms() <= now_ms() && a.unix_ms() + 60_000 > now_ms(),
        "{a}"
    );
    // A far-future sync already in the store (an old build, or written by hand) is neither the
    // parent of the next id nor can it make the next one jump.
    let poisoned = SyncId::parse("99991231T235959.999Z-00000000").unwrap();
    let mut p = idx.clone();
    p.sync_id = poisoned.clone();
    store
        .backend()
        .put(&index_key("v", 0, &poisoned), Bytes::from(p.encode()))
        .await
        .unwrap();
    let b = store.commit_index(Bytes::from(idx.encode())).await.unwrap();
    assert!(b > a && b < poisoned, "{b}");
    let all = store.list_syncs("v", 0).await.unwrap();
    assert_eq!(crate::index::newest(&all, now_ms()), Some(&b));
    // A retried commit (same nonce) answers with the first commit's id.
    let n = "0123456789abcdef0123456789abcdef";
    let c1 = store
        .commit_index(Bytes::from(
            index("v", vec![Entry::Data(d)], Some(n)).encode(),
        ))
        .await
        .unwrap();
    let c2 = store
        .commit_index(Bytes::from(
            index("v", vec![Entry::Data(d)], Some(n)).encode(),
        ))
        .await
        .unwrap();
    assert_eq!(c1, c2);
    assert_eq!(store.list_syncs("v", 0).await.unwrap().len(), 4);
    // A parent that does not exist is refused.
    let mut orphan = index("v", vec![Entry::Data(d)], None);
    orphan.parent = Some(SyncId::new(1));
    assert!(
        store
            .commit_index(Bytes::from(orphan.encode()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn concurrent_commits_never_overwrite_each_other() {
    let (_dir, store) = local().await;
    let store = Arc::new(store);
    let d = chunk(&store, 2).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.commit_index(Bytes::from(
                index("race", vec![Entry::Data(d)], None).encode(),
            ))
            .await
            .unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 16);
    assert_eq!(store.list_syncs("race", 0).await.unwrap(), ids);
}

#[tokio::test]
async fn put_new_creates_once() {
    let (_dir, store) = local().await;
    let b = store.backend();
    assert!(
        b.put_new("owners/x.json", Bytes::from_static(b"a"))
            .await
            .unwrap()
    );
    assert!(
        !b.put_new("owners/x.json", Bytes::from_static(b"b"))
            .await
            .unwrap()
    );
    assert_eq!(b.get("owners/x.json").await.unwrap().unwrap(), "a");
}

/// GC while a sync is in progress: a chunk it uploaded (not yet named by any index) is set
/// aside, not deleted, and its commit brings it back; what an abandoned sync left is deleted
/// once no lease from that time is alive.
#[tokio::test]
async fn gc_during_a_sync_deletes_nothing_it_will_reference() {
    let (_dir, store) = local().await;
    let kept = chunk(&store, 3).await;
    store
        .commit_index(Bytes::from(
            index("old", vec![Entry::Data(kept)], None).encode(),
        ))
        .await
        .unwrap();
    let abandoned = chunk(&store, 4).await;
    let lease = store.begin_sync("new", 0).await.unwrap();
    let mine = chunk(&store, 5).await;
    let g = store.gc().await.unwrap();
    assert_eq!(
        (g.chunks_kept, g.chunks_fossilized, g.chunks_deleted),
        (1, 2, 0),
        "{g:?}"
    );
    assert_eq!(g.leases, vec![format!("leases/{lease}.json")]);
    assert_eq!(store.has_chunks(vec![mine]).await.unwrap(), vec![false]);
    // Another GC while the sync is still in progress deletes nothing either.
    let g = store.gc().await.unwrap();
    assert_eq!((g.chunks_deleted, g.fossils_waiting), (0, 2), "{g:?}");
    // The sync commits: its chunk comes back.
    let id = store
        .commit_index(Bytes::from(
            index("new", vec![Entry::Data(mine)], None).encode(),
        ))
        .await
        .unwrap();
    store.end_sync(&lease).await.unwrap();
    assert_eq!(store.has_chunks(vec![mine]).await.unwrap(), vec![true]);
    // The lease has ended: the abandoned chunk goes.
    let g = store.gc().await.unwrap();
    assert_eq!((g.chunks_deleted, g.fossils_waiting), (1, 0), "{g:?}");
    assert_eq!(
        store.has_chunks(vec![abandoned]).await.unwrap(),
        vec![false]
    );
    let v = store.verify().await.unwrap();
    assert!(v.is_clean() && v.indexes_ok == 2 && v.fossils == 0, "{v:?}");
    let idx = SyncIndex::parse(&store.get_index("new", 0, &id).await.unwrap(), "t").unwrap();
    assert_eq!(idx.entries, vec![Entry::Data(mine)]);
}

/// A chunk set aside after the commit checked it but before the index was visible is brought
/// back by the commit's second check (or by the GC's second mark); an export reading a fossil
/// brings it back too.
#[tokio::test]
async fn readers_bring_fossils_back() {
    let (_dir, store) = local().await;
    let d = chunk(&store, 6).await;
    let g = store.gc().await.unwrap();
    assert_eq!(g.chunks_deleted, 1, "no lease: deleted at once");
    let d2 = chunk(&store, 7).await;
    let lease = store.begin_sync("w", 0).await.unwrap();
    store.gc().await.unwrap();
    assert_eq!(
        store.has_chunks(vec![d, d2]).await.unwrap(),
        vec![false, false]
    );
    let bytes = store.get_chunk(d2).await.unwrap();
    crate::chunk::decode_chunk(&bytes, Some(d2), "t").unwrap();
    assert_eq!(store.has_chunks(vec![d2]).await.unwrap(), vec![true]);
    store.end_sync(&lease).await.unwrap();
}

#[tokio::test]
async fn tokens_and_owners() {
    let (_dir, store) = local().await;
    let a = store.issue_token("site-a").await.unwrap();
    let b = store.issue_token("site-b").await.unwrap();
    assert!(store.issue_token("../x").await.is_err());
    assert_eq!(
        store
            .authenticate(&a.token)
            .await
            .unwrap()
            .unwrap()
            .connector,
        "site-a"
    );
    assert!(
        store
            .authenticate("gwt-nope-nope-nope")
            .await
            .unwrap()
            .is_none()
    );
    let listed = store.tokens().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|t| !t.sha256.is_empty() && t.sha256 != a.token)
    );
    store.revoke_token(&b.record.id).await.unwrap();
    assert!(store.authenticate(&b.token).await.unwrap().is_none());
    // Owners: the first writer wins; the other connector can neither write nor read it.
    store.claim_vm("web", "site-a").await.unwrap();
    store.claim_vm("web", "site-a").await.unwrap();
    let e = store.claim_vm("web", "site-b").await.unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e}");
    assert!(store.check_read("web", "site-b").await.is_err());
    store.check_read("web", "site-a").await.unwrap();
    // A VM written without an owner record belongs to the legacy connector.
    let d = chunk(&store, 8).await;
    store
        .commit_index(Bytes::from(
            index("direct", vec![Entry::Data(d)], None).encode(),
        ))
        .await
        .unwrap();
    assert_eq!(
        store.owner_of("direct").await.unwrap().as_deref(),
        Some(access::LEGACY_CONNECTOR)
    );
    assert!(store.claim_vm("direct", "site-a").await.is_err());
    // Importing a legacy token twice gives one record.
    let r1 = store
        .import_token("0123456789abcdef0123", "default")
        .await
        .unwrap();
    let r2 = store
        .import_token("0123456789abcdef0123", "default")
        .await
        .unwrap();
    assert_eq!(r1, r2);
}

#[tokio::test]
async fn owner_race_has_one_winner() {
    let (_dir, store) = local().await;
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.claim_vm("contested", &format!("c{i}")).await.is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn usage_counts_shared_chunks_once() {
    let (_dir, store) = local().await;
    let t = chunk(&store, 9).await;
    let x = chunk(&store, 10).await;
    let y = chunk(&store, 11).await;
    for (vm, own) in [("a", x), ("b", y)] {
        store
            .commit_index(Bytes::from(
                index(
                    vm,
                    vec![Entry::Data(t), Entry::Data(own), Entry::Zero],
                    None,
                )
                .encode(),
            ))
            .await
            .unwrap();
    }
    let u = store.usage().await.unwrap();
    assert_eq!(u.chunks, 3);
    assert_eq!(u.logical_bytes, 4 * 8192);
    assert_eq!(u.vms.len(), 2);
    let a = &u.vms[0];
    assert_eq!((a.disks, a.syncs, a.logical_bytes), (1, 1, 2 * 8192));
    assert!(
        a.unique_bytes > 0 && a.unique_bytes < a.referenced_bytes,
        "{a:?}"
    );
    assert_eq!(
        u.stored_bytes,
        u.vms.iter().map(|v| v.unique_bytes).sum::<u64>() + (a.referenced_bytes - a.unique_bytes)
    );
}

#[test]
fn escaping_is_one_safe_segment() {
    assert_eq!(escape_segment("web-01"), "web-01");
    assert_eq!(escape_segment("a/b c"), "a%2Fb%20c");
    assert_eq!(escape_segment(".."), "%2E.");
    assert_eq!(escape_segment("é"), "%C3%A9");
}

#[tokio::test]
async fn a_version_1_store_is_upgraded_and_other_versions_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> = Arc::new(local::LocalDir::create(dir.path()).unwrap());
    b.put(
        "godwit-store.json",
        Bytes::from_static(br#"{"format":"godwit-store","version":1}"#),
    )
    .await
    .unwrap();
    Store::open(b.clone()).await.unwrap();
    let m = b.get("godwit-store.json").await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&m).contains("\"version\": 2"),
        "{m:?}"
    );
    b.put(
        "godwit-store.json",
        Bytes::from_static(br#"{"format":"godwit-store","version":3}"#),
    )
    .await
    .unwrap();
    let e = Store::open(b).await.err().unwrap();
    assert!(e.to_string().contains("version 3"), "{e}");
}
