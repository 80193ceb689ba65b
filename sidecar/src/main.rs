fn main() {
    eprintln!("roster-sidecar: not implemented yet (see the open issue)");
    std::process::exit(2);
}
