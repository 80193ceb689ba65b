//! Fuzzes the ACL rule parser (HCL and JSON) and the authorizer built from what it accepts.
//! Properties: parsing never panics; a parsed policy never grants write without read; the most
//! specific rule decides; a management authorizer allows everything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry::acl::{Access, Authorizer, Resource, Rules};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(rules) = Rules::parse(&text) else { return };
    for default_allow in [false, true] {
        let a = Authorizer::new(default_allow, [&rules]);
        // Names to probe: every rule's own name, its extensions, and a few fixed ones.
        let mut names: Vec<String> = vec![String::new(), "x".into(), "a/b".into()];
        for r in &rules.rules {
            names.push(r.name.clone());
            names.push(format!("{}/sub", r.name));
        }
        for res in Resource::ALL {
            for name in &names {
                let write = a.allows(res, name, Access::Write);
                let read = a.allows(res, name, Access::Read);
                assert!(!write || read, "write without read on {res:?} {name:?}");
                // An exact rule decides its own name.
                for r in rules.rules.iter().filter(|r| r.resource == res && !r.prefix && &r.name == name) {
                    let merged = rules
                        .rules
                        .iter()
                        .filter(|o| o.resource == res && !o.prefix && o.name == r.name)
                        .fold(r.access, |acc, o| acc.merge(o.access));
                    assert_eq!(a.access(res, name), merged);
                }
                if a.allows_write_prefix(res, name) {
                    assert!(write);
                }
            }
        }
    }
    let m = Authorizer::management();
    assert!(Resource::ALL.iter().all(|r| m.allows(*r, &text, Access::Write)));
});
