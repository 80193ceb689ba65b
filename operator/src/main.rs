fn main() {
    eprintln!("roster-operator: not implemented yet (see the open issue)");
    std::process::exit(2);
}
