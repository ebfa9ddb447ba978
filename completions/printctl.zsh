
#compdef printctl

_printctl_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _PRINTCTL_COMPLETE=complete_zsh printctl)
}

compdef _printctl_completion printctl

