use std::path::Path;
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/azure-monitor");
#[test]
fn dump() {
    let mut names: Vec<_> = std::fs::read_dir(FIXTURES).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names {
        let body = std::fs::read(&p).unwrap();
        let name = Path::new(&p).file_name().unwrap().to_string_lossy().to_string();
        match itsmc::alert::parse(&body) {
            Ok(mut a) => { a.context = serde_json::Value::Null; println!("== {name}\n{a:#?}"); }
            Err(e) => println!("== {name}\nERR {e:?}"),
        }
    }
}
