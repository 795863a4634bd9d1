package com.example.hello;

import java.util.List;
import java.util.Locale;

/** Builds greetings in a few languages. */
public final class Greeter {
    private final Locale locale;

    public Greeter(Locale locale) {
        this.locale = locale;
    }

    public String greet(String name) {
        if (locale.getLanguage().equals("fr")) {
            return "Bonjour, " + name;
        }
        return "Hello, " + name;
    }

    public List<String> greetAll(List<String> names) {
<|cursor|>
    }
}
