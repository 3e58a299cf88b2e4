use super::*;
use crate::transport::wire::parse_header;

/// An accepted message as the hub would show it, received at `at`.
fn accepted(header: &str, payload: &[u8], at: f64, stored: Option<&str>) -> Accepted {
    let parsed = parse_header(header.as_bytes()).unwrap();
    let msg = parsed.msg.clone();
    let kind = if msg.ends_with("|jpg") {
        Kind::Jpeg
    } else if parsed.shape.is_some() {
        Kind::Array
    } else if msg.contains("|motion|") || msg.contains("|trigger|") {
        Kind::Event
    } else if msg.ends_with("|Heartbeat") {
        Kind::Heartbeat
    } else {
        Kind::Text
    };
    let first = msg.split('|').next().unwrap();
    Accepted {
        kind,
        node: first.split(' ').next().unwrap().to_string(),
        view: first.split_once(' ').map(|(_, v)| v.to_string()),
        header: parsed,
        raw_header: Bytes::copy_from_slice(header.as_bytes()),
        payload: Bytes::copy_from_slice(payload),
        received: at,
        stored: stored.map(PathBuf::from),
    }
}

#[test]
fn views_keep_their_latest_image_and_motion_state() {
    let fleet = Fleet::new(Some("/store".into()));
    let mut changes = fleet.subscribe();
    let now = unix_now();
    fleet.accepted(&accepted(r#"{"msg": "yard|Restart|pi4|camnode 0.1.0"}"#, b"", now - 3.0, None));
    fleet.accepted(&accepted(r#"{"msg": "yard gate|motion|moving", "score": 4.0}"#, b"", now - 2.0, None));
    fleet.accepted(&accepted(r#"{"msg": "yard gate|jpg"}"#, b"pre-event", now - 1.9, Some("/store/d/a.jpg")));
    fleet.accepted(&accepted(r#"{"msg": "yard gate|jpg", "score": 5.0}"#, b"first", now - 1.8, Some("/store/d/b.jpg")));
    fleet.accepted(&accepted(r#"{"msg": "yard gate|jpg", "score": 9.0}"#, b"best", now - 1.7, Some("/store/d/c.jpg")));
    fleet.accepted(&accepted(r#"{"msg": "yard gate|jpg", "score": 6.0}"#, b"later", now - 1.6, Some("/store/d/e.jpg")));
    assert!(changes.has_changed().unwrap(), "readers are told");
    assert_eq!(*changes.borrow_and_update(), 6);

    let snapshot = fleet.snapshot(0, 100);
    let node = &snapshot.nodes[0];
    assert_eq!((node.name.as_str(), node.host.as_deref(), node.restarts, node.stale), ("yard", Some("pi4"), 1, false));
    let view = &node.views[0];
    assert_eq!((view.view.as_str(), view.images, view.moving, view.score, view.events), ("gate", 4, true, Some(6.0), 1));
    assert_eq!(view.rate, 4.0 / RATE_WINDOW);
    assert_eq!(&fleet.latest("yard", "gate").unwrap().payload[..], b"later");
    let (version, picture) = fleet.event_picture("yard", "gate").unwrap();
    assert_eq!((version, &picture.payload[..]), (2, &b"best"[..]), "the event's image is its best-scored one");
    let whats: Vec<_> = snapshot.events.iter().map(|e| (e.id, e.what.as_str(), e.image.as_deref())).collect();
    assert_eq!(whats, [(1, "restart", None), (2, "moving", Some("d/c.jpg"))]);

    fleet.accepted(&accepted(r#"{"msg": "yard gate|motion|still", "score": 0.5}"#, b"", now - 1.0, None));
    fleet.accepted(&accepted(r#"{"msg": "yard gate|jpg", "score": 20.0}"#, b"after", now - 0.5, Some("/store/d/f.jpg")));
    let snapshot = fleet.snapshot(2, 100);
    assert!(!snapshot.nodes[0].views[0].moving);
    assert_eq!(snapshot.events.len(), 1, "only the events after the one given");
    assert_eq!(fleet.event_picture("yard", "gate").unwrap().0, 2, "an image after the event is not its image");
    assert_eq!(fleet.snapshot(0, 100).events[1].image.as_deref(), Some("d/c.jpg"));
    assert_eq!(fleet.last_event(), 3);
}

#[test]
fn heartbeats_bring_health_and_decide_staleness() {
    let fleet = Fleet::new(None);
    let now = unix_now();
    fleet.accepted(&accepted(r#"{"msg": "pi|Heartbeat"}"#, b"", now - 100.0, None));
    let node = fleet.snapshot(0, 0).nodes.remove(0);
    assert_eq!((node.health, node.stale_after, node.stale), (None, DEFAULT_STALE_S, true), "imagenode's heartbeats, 100 s ago");
    fleet.accepted(&accepted(r#"{"msg": "pi|Heartbeat", "heartbeat_s": 2.0, "temp_c": 51.5, "fps": 9.9}"#, b"", now - 5.0, None));
    let node = fleet.snapshot(0, 0).nodes.remove(0);
    let health = node.health.unwrap();
    assert_eq!((health.temp_c, health.fps, node.stale_after, node.stale, node.heartbeats), (Some(51.5), Some(9.9), 6.0, false, 2));
    let node = fleet.node("pi", 10).unwrap();
    assert!(node.events.is_empty() && node.scores.is_empty());
    assert!(fleet.node("nobody", 10).is_none());
}

#[test]
fn raw_arrays_become_jpegs_on_request() {
    let fleet = Fleet::new(None);
    let pixels = vec![128u8; 16 * 8 * 3];
    fleet.accepted(&accepted(r#"{"msg": "n v|image", "dtype": "uint8", "shape": [8, 16, 3]}"#, &pixels, unix_now(), None));
    let view = &fleet.snapshot(0, 0).nodes[0].views[0];
    assert_eq!((view.width, view.height), (Some(16), Some(8)));
    let jpeg = fleet.latest("n", "v").unwrap().jpeg().unwrap();
    let header = turbojpeg::read_header(&jpeg).unwrap();
    assert_eq!((header.width, header.height), (16, 8));
}

#[test]
fn the_timeline_and_the_score_history_are_bounded() {
    let fleet = Fleet::new(None);
    let start = unix_now() - 10_000.0;
    for i in 0..(TIMELINE + 10) {
        let at = start + i as f64;
        fleet.accepted(&accepted(r#"{"msg": "n v|trigger|pressed"}"#, b"", at, None));
        fleet.accepted(&accepted(r#"{"msg": "n v|jpg", "score": 1.0}"#, b"x", at + 0.5, None));
    }
    let snapshot = fleet.snapshot(0, usize::MAX);
    assert_eq!(snapshot.events.len(), TIMELINE);
    assert_eq!(snapshot.events[0].id, 11);
    assert_eq!(fleet.node("n", 5).unwrap().scores["v"].len(), SCORE_POINTS);
    assert_eq!(snapshot.nodes[0].views[0].triggers, (TIMELINE + 10) as u64);
}

#[test]
fn too_many_nodes_are_left_out() {
    let fleet = Fleet::new(None);
    for i in 0..=MAX_NODES {
        fleet.accepted(&accepted(&format!(r#"{{"msg": "n{i}|Heartbeat"}}"#), b"", unix_now(), None));
    }
    assert_eq!(fleet.snapshot(0, 0).nodes.len(), MAX_NODES);
}
