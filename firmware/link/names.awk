# key(name): a symbol name without the parts that change from build to build.
# v0 names (_R...) carry each crate's disambiguator (Cs<base62>_), which depends on the
# compiler version, the target and the dependency versions; LLVM appends .llvm.<N> to
# local functions it promotes across code units.
function key(name) {
    if (substr(name, 1, 2) == "_R")
        gsub(/Cs[0-9A-Za-z]+_/, "Cs_", name)
    sub(/\.llvm\.[0-9]+$/, ".llvm.", name)
    return name
}
