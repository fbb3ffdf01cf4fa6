# Reads `nm --defined-only` output; prints the code symbols whose key is in the profile
# file (variable `profile`, one key per line, # comments).
BEGIN {
    while ((getline line < profile) > 0)
        if (line != "" && substr(line, 1, 1) != "#")
            hot[line] = 1
}
NF == 3 && $2 ~ /^[tTwW]$/ && (key($3) in hot) { print $3 }
